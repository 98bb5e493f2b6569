//! The desktop-clean smoke check's readers (cloud-init/guest/smoke.py, run with python3 on
//! sample `gio mount -l` and `xprop` output; nothing is booted): a seed volume in the volume
//! list, and a vncconfig window or a polkit password prompt in the window list are found;
//! the user's own are not.

use crate::common::smoke_py;
use serde_json::json;

#[test]
fn seed_volumes_in_the_session_volume_list_are_found_and_no_other() {
    let gio = "Drive(0): QEMU DVD-ROM\n  Type: GProxyDrive (GProxyVolumeMonitorUDisks2)\n  \
               Volume(0): cidata\n    Type: GProxyVolume (GProxyVolumeMonitorUDisks2)\n\
               Volume(0): config-2\n\
               Mount(0): data -> file:///media/e2e/data\n\
               Volume(1): my-cidata-notes\n";
    let v = smoke_py(&format!(
        "print(json.dumps(m.seed_volumes_listed({gio:?})))"
    ));
    assert_eq!(v, json!(["volume cidata", "volume config-2"]));
    let v = smoke_py("print(json.dumps(m.seed_volumes_listed('Drive(0): QEMU DVD-ROM\\n')))");
    assert_eq!(v, json!([]), "a drive without the seed volume is fine");
}

#[test]
fn unwanted_windows_are_found_in_the_session_window_tree() {
    // `xwininfo -root -tree` as X.Org's xwininfo prints it: id, name, (instance class).
    let tree = r#"
xwininfo: Window id: 0x3c3 (the root window) (has no name)

  Root window id: 0x3c3 (the root window) (has no name)
  Parent window id: 0x0 (none)
     7 children:
     0x1a00003 "VNC config": ("vncconfig" "Vncconfig")  300x200+0+0  +0+0
     0x1c00005 "Authenticate": ("polkit-gnome-authentication-agent-1" "Polkit-gnome-authentication-agent-1")  400x200+0+0  +0+0
     0x1e00004 "Terminal - smoke@vm": ("xfce4-terminal" "Xfce4-terminal")  600x400+0+0  +0+0
        1 child:
        0x1e00005 (has no name): ()  1x1+-1+-1  +-1+-1
     0x2000003 "xfce4-panel": ("xfce4-panel" "Xfce4-panel")  1280x26+0+0  +0+0
     0x2000001 "polkit-gnome-authentication-agent-1": ("polkit-gnome-authentication-agent-1" "Polkit-gnome-authentication-agent-1")  10x10+10+10  +10+10
     0x200007 "vncconfig": ("vncconfig" "Vncconfig")  1x1+0+0  +0+0
"#;
    // Managed (in the task list): the iconified vncconfig and the prompt. Never mapped:
    // `vncconfig -nowin`'s selection window and the polkit agent's group leader.
    let v = smoke_py(&format!(
        "w = m.tree_windows({tree:?})\n\
         print(json.dumps([len(w), m.unwanted_windows(w, {{'0x1a00003', '0x1c00005', '0x1e00004'}}), m.unwanted_windows(w, {{'0x1e00004'}})]))"
    ));
    assert_eq!(
        v,
        json!([
            7,
            [
                "0x1a00003 (vncconfig)",
                "0x1c00005 (polkit password prompt: Authenticate)"
            ],
            []
        ])
    );
}

#[test]
fn xrdp_refusals_and_grants_are_read_from_the_session_manager_log() {
    let log = "[20261129-04:40:01] [INFO ] scp_v0s_accept: ...\n\
               [20261129-04:40:02] [ERROR] pam_authenticate failed: Authentication failure\n\
               [20261129-04:40:02] [INFO ] AUTHFAIL: user=smoke ip=::ffff:10.0.2.2 time=1795927206\n\
               [20261129-04:41:10] [INFO ] ++ created session (access granted): username smoke, ip 10.0.2.2:40312 - socket: 12\n\
               [20261129-04:41:12] [INFO ] ++ created session (access granted): username smokey, ip ::1\n";
    let v = smoke_py(&format!(
        "print(json.dumps([m.rdp_attempts({log:?}, 'smoke'), m.rdp_attempts({log:?}, 'smok'), m.rdp_attempts('', 'smoke')]))"
    ));
    assert_eq!(v, json!([[true, true], [false, false], [false, false]]));
}
