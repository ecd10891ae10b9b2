# NixOS VM tests, one scenario a file. Each boots two machines
# (./common.nix): `dashboard` with the mock dashboard and `agent` with the
# NixOS module. Every scenario has a twin among the cargo end-to-end tests
# (agent/tests), because VM tests need KVM and a binary cache.
{
  pkgs,
  nixosModule,
  mockDashboard,
  version,
}:

let
  mkTest = import ./common.nix {
    inherit
      pkgs
      nixosModule
      mockDashboard
      version
      ;
  };
  # What a VM needs to switch to a system published with `publish_system`.
  flakeSystemSettings = {
    sandbox = false;
    experimental-features = [
      "nix-command"
      "flakes"
    ];
  };
  # A VM that boots through systemd-boot with an EFI system partition, so
  # that a switch's boot loader installation and `/boot` are real.
  systemdBoot = {
    virtualisation.useBootLoader = true;
    virtualisation.useEFIBoot = true;
    boot.loader.systemd-boot.enable = true;
    boot.loader.efi.canTouchEfiVariables = true;
  };
  scenario =
    file:
    import file {
      inherit
        mkTest
        flakeSystemSettings
        systemdBoot
        ;
    };
in
{
  vm-register = scenario ./register.nix;
  vm-host-tests = scenario ./host-tests.nix;
  vm-pull = scenario ./pull.nix;
  vm-stop = scenario ./stop.nix;
  vm-restart = scenario ./restart.nix;
  vm-config-error = scenario ./config-error.nix;
  vm-dashboard-restart = scenario ./dashboard-restart.nix;
  vm-token-secrecy = scenario ./token-secrecy.nix;
  vm-switch = scenario ./switch.nix;
  vm-auto-rollback = scenario ./auto-rollback.nix;
  vm-preview = scenario ./preview.nix;
  vm-rollback = scenario ./rollback.nix;
  vm-reboot = scenario ./reboot.nix;
}
