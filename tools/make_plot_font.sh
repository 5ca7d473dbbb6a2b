#!/usr/bin/env bash
# Builds crates/train/assets/DejaVuSans-ascii.ttf, the font the training plots are labelled
# with: DejaVu Sans from Debian's fonts-dejavu-core, subset to printable ASCII (fonttools'
# pyftsubset) so the binary carries ~20 KB instead of 760 KB. Licence: crates/train/assets/
# DejaVu-LICENSE (Bitstream Vera / public-domain changes; redistribution allowed).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
(cd "$tmp" && apt-get download fonts-dejavu-core >/dev/null && dpkg -x fonts-dejavu-core_*.deb x)
python3 -m fontTools.subset "$tmp/x/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf" \
  --unicodes="U+0020-007E" --output-file=crates/train/assets/DejaVuSans-ascii.ttf
cp "$tmp/x/usr/share/doc/fonts-dejavu-core/copyright" crates/train/assets/DejaVu-LICENSE
rm -rf "$tmp"
