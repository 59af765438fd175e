#!/usr/bin/env bash
# Put Fashion-MNIST in torchvision's layout under DEST/FashionMNIST/raw (default DEST: data).
# Source, in order: the IDX files of Debian's package dataset-fashion-mnist (installed with
# apt-get when we are root and it is missing), else torchvision's own download.
# Files are written to a temporary name and moved into place, so an interrupted run leaves
# nothing half-written. Needs PY (the venv's python) for the torchvision fallback.
set -euo pipefail
dest="${1:-data}"
raw="$dest/FashionMNIST/raw"
system=/usr/share/datasets/fashion-mnist
files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

have_all() { for f in "${files[@]}"; do [ -s "$raw/$f" ] || return 1; done; }
if have_all; then exit 0; fi

if [ ! -f "$system/train-images-idx3-ubyte.gz" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian package dataset-fashion-mnist ..."
  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
    || echo "apt-get could not install dataset-fashion-mnist; falling back to torchvision's download"
fi

mkdir -p "$raw"
if [ -f "$system/train-images-idx3-ubyte.gz" ]; then
  for f in "${files[@]}"; do
    gunzip -c "$system/$f.gz" > "$raw/$f.part"
    mv "$raw/$f.part" "$raw/$f"
  done
  echo "Fashion-MNIST: $raw (from $system)"
else
  "${PY:-python3}" -c "import sys, torchvision; torchvision.datasets.FashionMNIST(sys.argv[1], download=True)" "$dest"
  echo "Fashion-MNIST: $raw (downloaded by torchvision)"
fi
have_all || { echo "error: Fashion-MNIST files missing under $raw" >&2; exit 1; }
