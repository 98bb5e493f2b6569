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
fn the_window_list_and_unwanted_windows_are_read_from_xprop() {
    let v = smoke_py(
        "print(json.dumps([m.window_list('_NET_CLIENT_LIST(WINDOW): window id # 0x1a00003, 0x1e00004'), \
         m.window_list('_NET_CLIENT_LIST:  not found.')]))",
    );
    assert_eq!(v, json!([["0x1a00003", "0x1e00004"], null]));
    let v = smoke_py(
        "print(json.dumps(m.unwanted_windows({\
         '0x1a00003': 'WM_CLASS(STRING) = \"vncconfig\", \"Vncconfig\"\\nWM_NAME(STRING) = \"VNC config\"\\n', \
         '0x1c00005': 'WM_CLASS(STRING) = \"polkit-gnome-authentication-agent-1\", \"Polkit-gnome-authentication-agent-1\"\\nWM_NAME(UTF8_STRING) = \"Authenticate\"\\n', \
         '0x1e00004': 'WM_CLASS(STRING) = \"xfce4-terminal\", \"Xfce4-terminal\"\\nWM_NAME(UTF8_STRING) = \"Terminal\"\\n'})))",
    );
    assert_eq!(
        v,
        json!([
            "0x1a00003 (vncconfig)",
            "0x1c00005 (polkit password prompt)"
        ])
    );
}
