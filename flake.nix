{
  description = "storefront: Nix store paths from one content-addressed copy, served as an OCI registry, a tvix/snix castore over gRPC, and a Nix binary cache";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      workspace = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package;
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = "storefront";
          inherit (workspace) version;
          src = pkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          cargoBuildFlags = [
            "--package"
            "storefront"
          ];
          nativeBuildInputs = [ pkgs.protobuf ];
          env.PROTOC = "${pkgs.protobuf}/bin/protoc";
          # The tests need nix-store and local services; run them with scripts/test.
          doCheck = false;
          meta = {
            description = "Serve Nix store paths from one content-addressed copy";
            license = with pkgs.lib.licenses; [
              asl20
              mit
            ];
            mainProgram = "storefront";
            platforms = systems;
          };
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            rustc
            cargo
            clippy
            rustfmt
            rust-analyzer
            cargo-nextest
            protobuf
            pkg-config
            nix
            skopeo
            containerd
            runc
          ];
          PROTOC = "${pkgs.protobuf}/bin/protoc";
          RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
        };
      });
    };
}
