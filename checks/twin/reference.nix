# The reference host's settings of services.nixfleet-agent: what the golden
# units in this directory are rendered from (render.nix), and what the flake's
# nixos-module check renders with the real NixOS to compare (compare_units.py).
{
  enable = true;
  url = "wss://fleet.example.com/ws";
  tokenFile = "/run/agenix/nixfleet-token";
  repoDir = "/srv/nixcfg";
  # fixed, so that the rendering does not depend on the nixpkgs it is made with
  nixpkgsVersion = "26.05.20260708.74cc63f";
}
