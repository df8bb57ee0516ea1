use super::*;

#[test]
fn ids_are_checked() {
    check_id("x", "abc-DEF_1.2").unwrap();
    for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
        assert!(check_id("x", bad).is_err(), "{bad}");
    }
}

#[test]
fn spec_fields() {
    let spec: Spec = serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "linux": {"cgroupsPath": "/pod/c"},
        "annotations": {"a": "b"}
    }))
    .unwrap();
    assert_eq!(spec_cgroup(&spec).as_deref(), Some("/pod/c"));
    assert_eq!(spec_annotations(&spec).len(), 1);
    let bare: Spec = serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2"})).unwrap();
    assert_eq!(spec_cgroup(&bare), None);
    assert!(!spec_terminal(&bare));
}

#[test]
fn a_poisoned_map_lock_does_not_take_the_handler_down() {
    let pods = Pods::default();
    std::thread::scope(|scope| {
        let poisoner = scope.spawn(|| {
            let _held = pods.map.lock().unwrap();
            panic!("poisoning the pod map on purpose");
        });
        assert!(poisoner.join().is_err());
    });
    assert!(pods.map.is_poisoned());
    assert!(pods.get("p1").is_none());
    pods.forget("p1");
    assert!(lock_map(&pods.map).is_empty());
}

#[test]
fn exec_failure_codes() {
    assert_eq!(
        exec_failure_code("exec: \"nope\": executable file not found in $PATH"),
        127
    );
    assert_eq!(exec_failure_code("permission denied"), 126);
}
