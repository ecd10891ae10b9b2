# NixOS and nix-darwin, where the agent runs as root. Legacy mode: Nix reads
# the checkout with libgit2, which refuses a repository owned by another user
# unless git's configuration files mark it safe (it ignores the GIT_CONFIG_*
# variables the agent gives its own git). /etc/gitconfig is read by git and
# libgit2 on both platforms. (Home Manager runs the agent as the user who
# owns the checkout: nothing to mark.)
{ config, lib, ... }:

let
  cfg = config.services.nixfleet-agent;
in
{
  config = lib.mkIf (cfg.enable && cfg.repoDir != null) {
    environment.etc."gitconfig".text = lib.mkAfter ''
      [safe]
      	directory = ${cfg.repoDir}
    '';
  };
}
