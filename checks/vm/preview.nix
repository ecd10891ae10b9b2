# The switch's phases on a real NixOS (docs/commands.md, "A switch, phase by
# phase"): the guards refuse before anything changes, and a switch that
# passes them builds, shows its preview and activates exactly what it built.
#
# 1. The store guard: the booted configuration keeps a tebibyte free
#    (`minFreeSpace`), which no VM disk has: `switch` is refused before
#    anything is built, with one status and nothing changed.
# 2. The `/boot` guard: the VM boots through systemd-boot, so `/boot` is an
#    EFI system partition of its own. The specialisation `new-initrd` has an
#    initrd that is not copied there yet; with `/boot` filled up to less than
#    half of that initrd, `switch` is refused after the build, with the
#    figures, and nothing is activated or set.
# 3. The preview: `switch` to the specialisation `next` streams one block
#    (what the dry run said, the package changes, the units its
#    dry-activate would touch, run outside the agent's sandbox), then
#    activates exactly the built path: the system profile names it, and the
#    new generation's agent confirms it.
#
# 4. Switch inhibitors: the specialisation `inhibited` changes one of
#    `system.switch.inhibitors`; `switch` installs it for the next boot
#    (profile and systemd-boot's default entry) without activating it, and
#    heartbeats carry `needs_reboot`.
#
# Between 1 and 2 the agent gets a room of its own: the test activates the
# specialisation `roomy` (the same system with `minFreeSpace = 64`) by hand
# and restarts the agent. Twins in cargo: agent/tests/preview.rs and
# agent/tests/host_twin.rs (vm_twins.rs lists them).
{
  mkTest,
  flakeSystemSettings,
  systemdBoot,
}:

mkTest {
  name = "preview";
  agentConfig =
    { lib, ... }:
    {
      environment.etc."nixfleet-generation".text = lib.mkDefault "booted";
      imports = [ systemdBoot ];
      services.nixfleet-agent.minFreeSpace = lib.mkDefault 1048576;
      system.switch.inhibitors.nixfleet-vm = lib.mkDefault "1";
      specialisation = {
        roomy.configuration = {
          environment.etc."nixfleet-generation".text = "roomy";
          services.nixfleet-agent.minFreeSpace = 64;
        };
        new-initrd.configuration = {
          environment.etc."nixfleet-generation".text = "new-initrd";
          services.nixfleet-agent.minFreeSpace = 64;
          boot.initrd.kernelModules = [ "dm-snapshot" ];
        };
        next.configuration = {
          environment.etc."nixfleet-generation".text = "next";
          services.nixfleet-agent.minFreeSpace = 64;
        };
        inhibited.configuration = {
          environment.etc."nixfleet-generation".text = "inhibited";
          services.nixfleet-agent.minFreeSpace = 64;
          system.switch.inhibitors.nixfleet-vm = "2";
        };
      };
      nix.settings = flakeSystemSettings;
    };
  testScript = ''
    start()
    wait_frame("register")
    profile = "/nix/var/nix/profiles/system"
    agent.succeed(f"nix-env -p {profile} --set $(readlink -f /run/current-system)")
    booted = agent.succeed("readlink -f /run/current-system").strip()

    def specialisation(name):
        return agent.succeed(f"readlink -f {booted}/specialisation/{name}").strip()

    def pull(target, message):
        publish_system(target, message)
        after = last_seq()
        send("pull")
        wait_frame("status", after, '.payload.command == "pull" and .payload.status == "ok"')

    def switch():
        after = last_seq()
        send("switch")
        done = wait_frame("status", after, '.payload.command == "switch"', timeout=600)
        lines = [f["payload"]["line"] for f in frames("output", after) if f["seq"] < done["seq"]]
        return done, lines

    def unchanged(generation, system):
        assert agent.succeed("cat /etc/nixfleet-generation").strip() == generation
        assert agent.succeed(f"readlink -f {profile}").strip() == system

    with subtest("the store guard refuses before anything is built"):
        pull(specialisation("next"), "the next system")
        done, lines = switch()
        message = done["payload"]["message"]
        assert done["payload"]["status"] == "error", done
        assert message.startswith("Switch refused: the Nix store (/nix/store) has "), message
        assert "minFreeSpace 1048576.0 MiB" in message, message
        assert not any(l.startswith("[nixfleet-agent] building ") for l in lines), lines
        unchanged("booted", booted)

    with subtest("a room of its own: minFreeSpace 64"):
        roomy = specialisation("roomy")
        after = last_seq()
        agent.succeed(f"{roomy}/bin/switch-to-configuration test", f"nix-env -p {profile} --set {roomy}")
        agent.succeed(f"systemctl restart {UNIT}")
        wait_frame("register", after)

    with subtest("the /boot guard refuses a new initrd that does not fit"):
        new_initrd = specialisation("new-initrd")
        pull(new_initrd, "a system with a new initrd")
        need = int(agent.succeed(f"stat -L -c %s {new_initrd}/initrd").strip())
        free = int(agent.succeed("df --output=avail -B1 /boot | tail -1").strip())
        assert free > need, f"/boot has {free} bytes free, the initrd needs {need}"
        agent.succeed(f"fallocate -l {free - need // 2} /boot/filler")
        done, lines = switch()
        message = done["payload"]["message"]
        assert done["payload"]["status"] == "error", done
        assert message.startswith("Switch refused: /boot has "), message
        assert "the new kernel and initrd need" in message, message
        unchanged("roomy", roomy)
        agent.succeed("rm /boot/filler")

    with subtest("a switch builds, previews, then activates exactly what it built"):
        target = specialisation("next")
        pull(target, "the next system")
        done, lines = switch()
        assert done["payload"]["status"] == "ok", done
        assert done["payload"]["message"].endswith("the new generation passed its health checks"), done

        def at(prefix):
            return next(i for i, l in enumerate(lines) if l.startswith(prefix))

        order = [
            at("[nixfleet-agent] dry run: "),
            at("[nixfleet-agent] building "),
            at("[nixfleet-agent] ── preview ──"),
            at("[nixfleet-agent] units"),
            at("[nixfleet-agent] ── end of preview ──"),
            at("[nixfleet-agent] /boot: "),
            at("[nixfleet-agent] activating "),
        ]
        assert order == sorted(order), lines
        assert any(l.startswith("[nixfleet-agent]   would ") or l == "[nixfleet-agent] units: the activation changes no unit" for l in lines), lines
        assert agent.succeed("cat /etc/nixfleet-generation").strip() == "next"
        built = agent.succeed("readlink -f /var/lib/nixfleet-agent/built-system").strip()
        assert agent.succeed(f"readlink -f {profile}").strip() == built
        assert agent.succeed("readlink -f /run/current-system").strip() == target

    with subtest("changed switch inhibitors install the system for the next boot"):
        inhibited = specialisation("inhibited")
        pull(inhibited, "a system whose critical components changed")
        done, lines = switch()
        assert done["payload"]["status"] == "ok", done
        assert done["payload"]["message"] == (
            "Switch installed for the next boot: nixfleet-vm : 1 -> 2; reboot to activate it"
        ), done
        # the boot loader's default and the profile: the new system; running: the old one
        assert agent.succeed("cat /etc/nixfleet-generation").strip() == "next"
        assert agent.succeed(f"readlink -f {profile}").strip() == inhibited
        default = agent.succeed("sed -n 's/^default //p' /boot/loader/loader.conf").strip()
        entry = agent.succeed(f"cat /boot/loader/entries/{default}")
        assert f"init={inhibited}/init" in entry, entry
        # the agent restarts (the hub's switch waits for the reconnect), and
        # its heartbeats want a reboot
        back = wait_frame("register", done["seq"])
        wait_frame("heartbeat", back["seq"], ".payload.needs_reboot == true")

    no_violations()
  '';
}
