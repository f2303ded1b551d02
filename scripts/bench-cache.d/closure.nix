# The closure scripts/bench-cache serves: built offline by nix-build (builder
# /bin/sh, no sandbox, no substituters), shaped like a real closure:
#
# - 4 "big" paths, each one incompressible 96/64/48/32 MiB file (a large
#   shared library) plus a few small ones;
# - 40 "medium" paths, each a 1-5 MiB incompressible file and a 256 KiB text
#   file (base64), each referencing a big path;
# - 100 "small" paths, each 10-79 text files of 0-16 KiB in three
#   directories, an executable wrapper script and a symlink, each
#   referencing two earlier small paths and a medium one;
# - a top path referencing all of them.
#
# 145 store paths, about 390 MiB of NAR. Incompressible bytes come from a
# seeded AES-CTR stream (openssl), so every machine builds the same contents.
# `version` is part of every derivation: change it to get new store paths.
{ version }:
let
  inherit (builtins) genList elemAt toString;
  mk = name: deps: script: derivation {
    inherit name version deps;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-e" "-c" (common + script) ];
    PATH = "/usr/bin:/bin";
  };
  # Seeded incompressible bytes, and the references file every path has.
  common = ''
    rnd() { openssl enc -aes-256-ctr -nosalt -pbkdf2 -pass "pass:$version-$1" </dev/zero 2>/dev/null | head -c "$2"; }
    mkdir -p $out/nix-support
    for d in $deps; do echo "$d"; done > $out/nix-support/propagated-build-inputs
  '';
  mib = n: toString (n * 1048576);

  bigSizes = [ 96 64 48 32 ];
  big = genList (i: mk "sf-bench-big-${toString i}" [ ] ''
    mkdir -p $out/lib $out/share/doc/big-${toString i}
    rnd big-${toString i} ${mib (elemAt bigSizes i)} > $out/lib/libbig${toString i}.so
    ln -s libbig${toString i}.so $out/lib/libbig${toString i}.so.1
    seq 1 2000 | sed 's/^/changelog entry /' > $out/share/doc/big-${toString i}/CHANGES
    echo "big library ${toString i}" > $out/share/doc/big-${toString i}/README
  '') 4;

  medium = genList (i: mk "sf-bench-medium-${toString i}" [ (elemAt big (i - i / 4 * 4)) ] ''
    mkdir -p $out/lib $out/share
    rnd medium-${toString i} ${toString ((1 + (i * 37 - i * 37 / 5 * 5)) * 1048576)} > $out/lib/libmedium${toString i}.so
    rnd medium-text-${toString i} 196608 | base64 > $out/share/data-${toString i}.js
  '') 40;

  small = genList (i: mk "sf-bench-small-${toString i}"
    ((if i > 0 then [ (elemAt small (i / 2)) ] else [ ])
      ++ (if i > 2 then [ (elemAt small (i / 3)) ] else [ ])
      ++ [ (elemAt medium (i - i / 40 * 40)) ]) ''
    mkdir -p $out/bin $out/include $out/share/doc $out/lib/pkgconfig
    awk -v out="$out" -v n=${toString (10 + (i * 13 - i * 13 / 70 * 70))} -v seed=${toString (i + 1)} -v tag="$version" 'BEGIN {
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
  '') 100;

  top = mk "sf-bench-top" (big ++ medium ++ small) ''
    echo "closure of ${version}" > $out/README
  '';
in
top
