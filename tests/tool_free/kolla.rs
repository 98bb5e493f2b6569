//! The Kolla host's files that must equal what Kolla-Ansible's bootstrap-servers writes.

use crate::common;

use std::process::Command;

#[test]
fn daemon_json_is_byte_for_byte_what_ansibles_to_nice_json_writes() {
    // ansible-collection-kolla roles/docker/tasks/config.yml writes `docker_config |
    // to_nice_json` (Ansible: json.dumps(indent=4, sort_keys=True, separators=(',', ': ')))
    // with no trailing newline; the same dict in Python gives the same bytes.
    let dict = "{'log-opts': {'max-file': '5', 'max-size': '50m'}, 'iptables': False, 'bridge': 'none', 'ip-forward': False}";
    let o = Command::new(common::python())
        .args([
            "-c",
            &format!("import json,sys; sys.stdout.write(json.dumps({dict}, indent=4, sort_keys=True, separators=(',', ': ')))"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        imgbuild::features::kolla_host::DOCKER_DAEMON_JSON
    );
}
