# The reference user's settings of the Home Manager module's
# services.nixfleet-agent (alice on the host twin): what the golden user units
# in this directory are rendered from (../render-home-manager.nix), and what
# the flake's home-manager-module check renders with the real Home Manager to
# compare (../compare_units.py).
{
  enable = true;
  url = "wss://fleet.example.com/ws";
  tokenFile = "/home/alice/.config/nixfleet/token";
  repoDir = "/home/alice/nixcfg";
  hostname = "alice-twin";
  # fixed, so that the rendering does not depend on the nixpkgs it is made with
  nixpkgsVersion = "26.05.20260708.74cc63f";
}
