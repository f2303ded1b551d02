# The closures scripts/bench-fetch fetches: built offline by nix-build
# (builder /bin/sh, no sandbox, no substituters).
#
# - 4 "big" paths, each an incompressible 96/64/48/32 MiB file plus small ones;
# - 40 "medium" paths, each a 1-5 MiB incompressible file and a 256 KiB text
#   file, each referencing a big path;
# - `small` "small" paths (default 480), each 10-79 text files of 0-16 KiB in
#   three directories, an executable wrapper script and a symlink, each
#   referencing two earlier small paths and a medium one;
# - a top path referencing all of them.
#
# With the defaults: 525 store paths, about 400 MiB of NAR.
#
# `version` names the store paths (every derivation carries it). File
# contents come from `content` instead, so two closures with different
# versions and the same content are different store paths holding the same
# bytes, the way a rebuild after a small change is. `changed = true` changes
# about a tenth of the bytes: the smallest big file, the incompressible file
# of every tenth medium path and the text of every tenth small path (plus
# every file naming a store path, as in any rebuild).
{ version, content ? "c1", small ? 480, changed ? false }:
let
  inherit (builtins) genList elemAt toString;
  mk = name: deps: script: derivation {
    inherit name version deps;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-e" "-c" (common + script) ];
    PATH = "/usr/bin:/bin";
  };
  common = ''
    rnd() { openssl enc -aes-256-ctr -nosalt -pbkdf2 -pass "pass:${content}-$1" </dev/zero 2>/dev/null | head -c "$2"; }
    mkdir -p $out/nix-support
    for d in $deps; do echo "$d"; done > $out/nix-support/propagated-build-inputs
  '';
  mib = n: toString (n * 1048576);
  # The seed suffix of path i: "" unless this path is one that changes.
  tweak = i: if changed && i - i / 10 * 10 == 0 then "-changed" else "";

  bigSizes = [ 96 64 48 32 ];
  big = genList (i: mk "sf-fetch-big-${toString i}" [ ] ''
    mkdir -p $out/lib $out/share/doc/big-${toString i}
    rnd big-${toString i}${if changed && i == 3 then "-changed" else ""} ${mib (elemAt bigSizes i)} > $out/lib/libbig${toString i}.so
    ln -s libbig${toString i}.so $out/lib/libbig${toString i}.so.1
    seq 1 2000 | sed 's/^/changelog entry /' > $out/share/doc/big-${toString i}/CHANGES
  '') 4;

  medium = genList (i: mk "sf-fetch-medium-${toString i}" [ (elemAt big (i - i / 4 * 4)) ] ''
    mkdir -p $out/lib $out/share
    rnd medium-${toString i}${tweak i} ${toString ((1 + (i * 37 - i * 37 / 5 * 5)) * 1048576)} > $out/lib/libmedium${toString i}.so
    rnd medium-text-${toString i} 196608 | base64 > $out/share/data-${toString i}.js
  '') 40;

  smalls = genList (i: mk "sf-fetch-small-${toString i}"
    ((if i > 0 then [ (elemAt smalls (i / 2)) ] else [ ])
      ++ (if i > 2 then [ (elemAt smalls (i / 3)) ] else [ ])
      ++ [ (elemAt medium (i - i / 40 * 40)) ]) ''
    mkdir -p $out/bin $out/include $out/share/doc $out/lib/pkgconfig
    awk -v out="$out" -v n=${toString (10 + (i * 13 - i * 13 / 70 * 70))} -v seed=${toString (i + 1)} -v tag="${content}${tweak i}" 'BEGIN {
      srand(seed)
      for (f = 0; f < n; f++) {
        dir = (f % 3 == 0) ? "include" : (f % 3 == 1) ? "share/doc" : "lib/pkgconfig"
        file = out "/" dir "/file" f ".txt"
        size = int(rand() * rand() * 16384)
        s = ""
        while (length(s) < size)
          s = s sprintf("%s path %d file %d offset %d: %08x\n", tag, seed, f, length(s), int(rand() * 2147483647))
        printf "%s", substr(s, 1, size) > file
        close(file)
      }
    }'
    first=$(echo $deps | cut -d' ' -f1)
    printf '#!/bin/sh\n# small package ${toString i}\nexec %s/bin/run "$@"\n' "$first" > $out/bin/run
    chmod +x $out/bin/run
    ln -s ../include/file0.txt $out/share/header-link
  '') small;

  top = mk "sf-fetch-top" (big ++ medium ++ smalls) ''
    echo "closure of ${version}" > $out/README
  '';
in
top
