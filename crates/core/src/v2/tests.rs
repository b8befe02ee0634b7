//! Unit tests of the v2 store, named after the rule each checks. The checklist is etcd's
//! own v2store tests (store_test.go, store_ttl_test.go, watcher_hub_test.go,
//! event_test.go) plus etcd-v2-api.md; expected bodies and causes marked "etcd:" were
//! observed on a real etcd 3.4.23 (indices renumbered to ours: etcd starts user writes at 4).

use std::sync::Arc;

use super::history::{live_matches, scan_matches, EventHistory};
use super::tree::{clean_path, clean_segments};
use super::*;

/// A realistic entry time (2023-11-14T22:13:20Z), after etcd's year-2000 TTL floor.
const T0_MS: u64 = 1_700_000_000_000;
const T0_NS: u64 = T0_MS * 1_000_000;

fn store() -> Store {
    Store::new(1000)
}

fn put(key: &str, value: &str) -> V2Command {
    V2Command::Set(SetCommand { key: key.into(), value: value.into(), ..SetCommand::default() })
}

fn put_with(key: &str, value: &str, tweak: impl FnOnce(&mut SetCommand)) -> V2Command {
    let mut set = SetCommand { key: key.into(), value: value.into(), ..SetCommand::default() };
    tweak(&mut set);
    V2Command::Set(set)
}

fn mkdir(key: &str) -> V2Command {
    put_with(key, "", |set| set.is_dir = true)
}

fn del(key: &str, tweak: impl FnOnce(&mut DeleteCommand)) -> V2Command {
    let mut delete = DeleteCommand { key: key.into(), ..DeleteCommand::default() };
    tweak(&mut delete);
    V2Command::Delete(delete)
}

fn post(dir: &str, value: &str) -> V2Command {
    V2Command::CreateInOrder { dir: dir.into(), value: value.into(), is_dir: false, ttl_s: None }
}

fn ok(store: &mut Store, command: V2Command) -> V2Response {
    store.apply(T0_MS, &command).unwrap_or_else(|error| panic!("{command:?} failed: {error:?}"))
}

fn err(store: &mut Store, command: V2Command) -> V2Error {
    let before = store.index();
    let error = store.apply(T0_MS, &command).expect_err("command should fail");
    assert_eq!(store.index(), before, "a failure must not move the index");
    error
}

fn json(response: &V2Response) -> String {
    render_json(response)
}

fn get_json(store: &Store, key: &str, recursive: bool) -> String {
    json(&store.get(key, recursive, true, T0_MS).expect("get"))
}

fn found(lookup: WatchLookup) -> V2Response {
    match lookup {
        WatchLookup::Found(event) => event,
        WatchLookup::Pending { index } => panic!("expected an event, pending at {index}"),
    }
}

// ---- set / create / update / index rules ----

#[test]
fn set_of_new_key_is_201_with_created_equal_modified() {
    let mut s = store();
    let response = ok(&mut s, put("/frontends/fe1", "10.0.1.1"));
    assert_eq!(response.http_status(), 201);
    assert_eq!(
        json(&response),
        "{\"action\":\"set\",\"node\":{\"key\":\"/frontends/fe1\",\"value\":\"10.0.1.1\",\"modifiedIndex\":1,\"createdIndex\":1}}\n"
    );
    assert_eq!(response.etcd_index, 1);
    assert_eq!(s.index(), 1);
}

#[test]
fn set_over_existing_gives_fresh_created_index_and_prev_node() {
    let mut s = store();
    ok(&mut s, put("/frontends/fe1", "10.0.1.1"));
    let response = ok(&mut s, put("/frontends/fe1", "10.0.1.2"));
    assert_eq!(response.http_status(), 200);
    // etcd (§9): createdIndex = modifiedIndex = the new index; prevNode is the old file.
    assert_eq!(
        json(&response),
        "{\"action\":\"set\",\"node\":{\"key\":\"/frontends/fe1\",\"value\":\"10.0.1.2\",\"modifiedIndex\":2,\"createdIndex\":2},\
         \"prevNode\":{\"key\":\"/frontends/fe1\",\"value\":\"10.0.1.1\",\"modifiedIndex\":1,\"createdIndex\":1}}\n"
    );
}

#[test]
fn implicit_parents_get_the_childs_index_and_no_event() {
    let mut s = store();
    ok(&mut s, put("/a", "x"));
    ok(&mut s, put("/b/c/d", "v"));
    for dir in ["/b", "/b/c"] {
        let view = s.get(dir, false, false, T0_MS).expect("parent exists").node;
        assert!(view.dir);
        assert_eq!((view.created_index, view.modified_index), (Some(2), Some(2)), "{dir}");
    }
    assert_eq!(s.index(), 2);
    assert_eq!(s.history_len(), 2, "one event per index, none for implicit dirs");
    // The dir listing shows the child dir without its nodes (non-recursive).
    assert_eq!(
        get_json(&s, "/b", false),
        "{\"action\":\"get\",\"node\":{\"key\":\"/b\",\"dir\":true,\"nodes\":[{\"key\":\"/b/c\",\"dir\":true,\"modifiedIndex\":2,\"createdIndex\":2}],\"modifiedIndex\":2,\"createdIndex\":2}}\n"
    );
}

#[test]
fn create_answers_105_when_the_key_or_dir_exists() {
    let mut s = store();
    ok(&mut s, put("/k", "v"));
    ok(&mut s, mkdir("/d"));
    let error = err(&mut s, put_with("/k", "w", |set| set.prev_exist = Some(false)));
    assert_eq!((error.code, error.cause.as_deref(), error.index), (105, Some("/k"), 2));
    let error = err(&mut s, put_with("/d", "", |set| {
        set.prev_exist = Some(false);
        set.is_dir = true;
    }));
    assert_eq!((error.code, error.cause.as_deref()), (105, Some("/d")));
    // prevValue doesn't rescue a create: prevExist=false decides first.
    let error = err(&mut s, put_with("/k", "w", |set| {
        set.prev_exist = Some(false);
        set.prev_value = Some("v".into());
    }));
    assert_eq!(error.code, 105);
}

#[test]
fn create_is_201_action_create_without_prev_node() {
    let mut s = store();
    let response = ok(&mut s, put_with("/new", "v", |set| set.prev_exist = Some(false)));
    assert_eq!(response.action, Action::Create);
    assert_eq!(response.http_status(), 201);
    assert!(response.prev_node.is_none());
}

#[test]
fn update_needs_the_key_and_keeps_created_index() {
    let mut s = store();
    let error = err(&mut s, put_with("/f1", "y", |set| set.prev_exist = Some(true)));
    assert_eq!((error.code, error.cause.as_deref()), (100, Some("/f1")));
    ok(&mut s, put("/f1", "a"));
    // etcd: update ignores dir=true on a file and writes the value.
    let response = ok(&mut s, put_with("/f1", "y", |set| {
        set.prev_exist = Some(true);
        set.is_dir = true;
    }));
    assert_eq!(
        json(&response),
        "{\"action\":\"update\",\"node\":{\"key\":\"/f1\",\"value\":\"y\",\"modifiedIndex\":2,\"createdIndex\":1},\
         \"prevNode\":{\"key\":\"/f1\",\"value\":\"a\",\"modifiedIndex\":1,\"createdIndex\":1}}\n"
    );
    assert_eq!(response.http_status(), 200);
}

#[test]
fn dir_update_changes_ttl_but_not_modified_index() {
    let mut s = store();
    ok(&mut s, mkdir("/d1"));
    let response = ok(&mut s, put_with("/d1", "", |set| {
        set.is_dir = true;
        set.prev_exist = Some(true);
        set.ttl_s = Some(100);
    }));
    // etcd: the event shows the new index, the node keeps its old one.
    assert_eq!(response.node.modified_index, Some(2));
    assert_eq!(response.node.ttl_s, Some(100));
    assert_eq!(s.index(), 2);
    let view = s.get("/d1", false, false, T0_MS).expect("dir").node;
    assert_eq!((view.modified_index, view.created_index, view.ttl_s), (Some(1), Some(1), Some(100)));
    // Without ttl the update makes it permanent again.
    let response = ok(&mut s, put_with("/d1", "", |set| set.prev_exist = Some(true)));
    assert_eq!(response.node.expiration_ns, None);
    assert_eq!(response.prev_node.as_ref().and_then(|prev| prev.ttl_s), Some(100));
    assert_eq!(s.next_deadline_ms(), None);
}

#[test]
fn update_of_a_dir_with_a_value_is_102() {
    let mut s = store();
    ok(&mut s, mkdir("/d1"));
    let error = err(&mut s, put_with("/d1", "x", |set| {
        set.prev_exist = Some(true);
        set.is_dir = true;
    }));
    assert_eq!((error.code, error.cause.as_deref(), error.index), (102, Some("/d1"), 1));
}

#[test]
fn plain_set_on_a_dir_is_102_and_dir_set_on_a_file_replaces_it() {
    let mut s = store();
    ok(&mut s, mkdir("/d"));
    assert_eq!(err(&mut s, put("/d", "v")).code, 102);
    assert_eq!(err(&mut s, mkdir("/d")).cause.as_deref(), Some("/d"));
    ok(&mut s, put("/f", "v"));
    let response = ok(&mut s, mkdir("/f"));
    assert_eq!(response.action, Action::Set);
    assert_eq!(response.http_status(), 200);
    assert!(response.node.dir);
    assert_eq!(response.prev_node.as_ref().and_then(|prev| prev.value.as_deref()), Some("v"));
}

#[test]
fn prev_index_zero_counts_as_absent() {
    let mut s = store();
    ok(&mut s, put("/k", "v"));
    let response = ok(&mut s, put_with("/k", "w", |set| set.prev_index = Some(0)));
    assert_eq!(response.action, Action::Set);
    let response = ok(&mut s, put_with("/k", "x", |set| {
        set.prev_index = Some(0);
        set.prev_exist = Some(true);
    }));
    assert_eq!(response.action, Action::Update);
}

// ---- compare and swap / delete ----

#[test]
fn compare_and_swap_cause_lists_the_failed_comparisons() {
    let mut s = store();
    ok(&mut s, put("/k", "three"));
    let value_only = err(&mut s, put_with("/k", "x", |set| set.prev_value = Some("four".into())));
    assert_eq!((value_only.code, value_only.cause.as_deref()), (101, Some("[four != three]")));
    let index_only = err(&mut s, put_with("/k", "x", |set| set.prev_index = Some(99)));
    assert_eq!(index_only.cause.as_deref(), Some("[99 != 1]"));
    let both = err(&mut s, put_with("/k", "x", |set| {
        set.prev_value = Some("four".into());
        set.prev_index = Some(99);
    }));
    assert_eq!(both.cause.as_deref(), Some("[four != three] [99 != 1]"));
    // Only the failing one is listed when one of two holds.
    let one_of_two = err(&mut s, put_with("/k", "x", |set| {
        set.prev_value = Some("three".into());
        set.prev_index = Some(99);
    }));
    assert_eq!(one_of_two.cause.as_deref(), Some("[99 != 1]"));
    assert_eq!(one_of_two.http_status(), 412);
}

#[test]
fn compare_and_swap_keeps_created_index_and_takes_next_index() {
    let mut s = store();
    ok(&mut s, put("/k", "a"));
    ok(&mut s, put("/other", "b"));
    let response = ok(&mut s, put_with("/k", "c", |set| {
        set.prev_value = Some("a".into());
        set.prev_index = Some(1);
        set.prev_exist = Some(true);
    }));
    assert_eq!(response.action, Action::CompareAndSwap);
    assert_eq!((response.node.created_index, response.node.modified_index), (Some(1), Some(3)));
    assert_eq!(response.node.value.as_deref(), Some("c"));
    assert_eq!(response.prev_node.as_ref().and_then(|prev| prev.value.as_deref()), Some("a"));
}

#[test]
fn compare_and_swap_on_a_dir_is_102_and_on_missing_is_100() {
    let mut s = store();
    ok(&mut s, mkdir("/d"));
    assert_eq!(err(&mut s, put_with("/d", "x", |set| set.prev_value = Some("y".into()))).code, 102);
    let missing = err(&mut s, put_with("/nope/deeper", "x", |set| set.prev_value = Some("y".into())));
    assert_eq!((missing.code, missing.cause.as_deref()), (100, Some("/nope")));
}

#[test]
fn compare_and_delete_checks_value_and_index() {
    let mut s = store();
    ok(&mut s, put("/k", "v"));
    let error = err(&mut s, del("/k", |d| d.prev_value = Some("w".into())));
    assert_eq!((error.code, error.cause.as_deref()), (101, Some("[w != v]")));
    let response = ok(&mut s, del("/k", |d| {
        d.prev_index = Some(1);
        d.is_dir = true;
    }));
    assert_eq!(
        json(&response),
        "{\"action\":\"compareAndDelete\",\"node\":{\"key\":\"/k\",\"modifiedIndex\":2,\"createdIndex\":1},\
         \"prevNode\":{\"key\":\"/k\",\"value\":\"v\",\"modifiedIndex\":1,\"createdIndex\":1}}\n"
    );
}

#[test]
fn compare_and_delete_of_a_dir_is_102_and_of_root_has_no_cause() {
    let mut s = store();
    ok(&mut s, mkdir("/d"));
    let error = err(&mut s, del("/d", |d| {
        d.prev_value = Some("x".into());
        d.recursive = true;
    }));
    assert_eq!((error.code, error.cause.as_deref()), (102, Some("/d")));
    // etcd: {"errorCode":102,"message":"Not a file","index":12}
    let error = err(&mut s, del("/", |d| d.prev_index = Some(3)));
    assert_eq!(error.to_json(), "{\"errorCode\":102,\"message\":\"Not a file\",\"index\":1}\n");
}

#[test]
fn delete_follows_the_dir_flag_table() {
    // (target, dir, recursive) → expected code or success; etcd-v2-api.md §5.
    let cases: [(&str, bool, bool, Option<u16>); 12] = [
        ("/file", false, false, None),
        ("/file", true, false, None),
        ("/file", false, true, None),
        ("/empty", false, false, Some(102)),
        ("/empty", true, false, None),
        ("/empty", false, true, None),
        ("/full", false, false, Some(102)),
        ("/full", true, false, Some(108)),
        ("/full", false, true, None),
        ("/missing", false, false, Some(100)),
        ("/missing", true, true, Some(100)),
        ("/", true, true, Some(107)),
    ];
    for (key, is_dir, recursive, expected) in cases {
        let mut s = store();
        ok(&mut s, put("/file", "v"));
        ok(&mut s, mkdir("/empty"));
        ok(&mut s, put("/full/child", "v"));
        let command = del(key, |d| {
            d.is_dir = is_dir;
            d.recursive = recursive;
        });
        match expected {
            None => {
                let response = ok(&mut s, command);
                assert_eq!(response.action, Action::Delete);
                assert!(s.get(key, false, false, T0_MS).is_err(), "{key} is gone");
                assert_eq!(response.node.dir, key != "/file");
                assert_eq!(response.node.modified_index, Some(4));
            }
            Some(code) => {
                let error = err(&mut s, command);
                assert_eq!(error.code, code, "{key} dir={is_dir} recursive={recursive}");
                let cause = if code == 107 { "/" } else { key };
                assert_eq!(error.cause.as_deref(), Some(cause));
            }
        }
        s.tree().check_invariants();
    }
}

#[test]
fn recursive_delete_removes_the_subtree_and_its_ttls() {
    let mut s = store();
    ok(&mut s, put_with("/d/a/x", "1", |set| set.ttl_s = Some(10)));
    ok(&mut s, put("/d/b", "2"));
    ok(&mut s, put("/keep", "3"));
    ok(&mut s, del("/d", |d| d.recursive = true));
    assert_eq!(s.ttl_entries(), 0);
    assert_eq!(s.next_deadline_ms(), None);
    assert_eq!(s.tree().files().into_keys().collect::<Vec<_>>(), vec!["/keep".to_string()]);
    s.tree().check_invariants();
}

// ---- error causes ----

#[test]
fn key_not_found_names_the_first_missing_prefix() {
    let mut s = store();
    ok(&mut s, mkdir("/present"));
    let error = s.get("/missing/deeper/key", false, false, T0_MS).expect_err("missing");
    assert_eq!(error.to_json(), "{\"errorCode\":100,\"message\":\"Key not found\",\"cause\":\"/missing\",\"index\":1}\n");
    assert_eq!(error.http_status(), 404);
    let error = s.get("/present/nope", false, false, T0_MS).expect_err("missing");
    assert_eq!(error.cause.as_deref(), Some("/present/nope"));
}

#[test]
fn not_a_directory_names_the_file_in_the_way() {
    let mut s = store();
    ok(&mut s, put("/f1", "v"));
    let below = s.get("/f1/x/y", false, false, T0_MS).expect_err("below a file");
    assert_eq!((below.code, below.cause.as_deref()), (104, Some("/f1")));
    for command in [
        put("/f1/x", "1"),
        put_with("/f1/x", "1", |set| set.prev_exist = Some(false)),
        put_with("/f1/x", "1", |set| set.prev_value = Some("q".into())),
        del("/f1/x", |_| {}),
        post("/f1", "job"),
    ] {
        let error = err(&mut s, command);
        assert_eq!((error.code, error.cause.as_deref(), error.http_status()), (104, Some("/f1"), 400));
    }
}

#[test]
fn root_is_read_only_but_accepts_in_order_keys() {
    let mut s = store();
    for command in [
        put("/", "v"),
        put_with("/", "v", |set| set.prev_exist = Some(false)),
        put_with("/", "v", |set| set.prev_exist = Some(true)),
        put_with("/", "v", |set| set.prev_value = Some("x".into())),
        del("/", |d| d.recursive = true),
    ] {
        let error = err(&mut s, command);
        assert_eq!(error.to_json(), "{\"errorCode\":107,\"message\":\"Root is read only\",\"cause\":\"/\",\"index\":0}\n");
    }
    let response = ok(&mut s, post("/", "job"));
    assert_eq!(response.node.key.as_deref(), Some("/00000000000000000001"));
}

#[test]
fn refresh_of_a_missing_key_is_100() {
    let mut s = store();
    let error = err(&mut s, put_with("/nope", "", |set| {
        set.refresh = true;
        set.ttl_s = Some(5);
    }));
    assert_eq!((error.code, error.cause.as_deref()), (100, Some("/nope")));
}

// ---- listing ----

#[test]
fn root_view_has_no_key_and_no_indices() {
    let mut s = store();
    assert_eq!(get_json(&s, "/", false), "{\"action\":\"get\",\"node\":{\"dir\":true}}\n");
    ok(&mut s, put("/a", "1"));
    assert_eq!(
        get_json(&s, "/", false),
        "{\"action\":\"get\",\"node\":{\"dir\":true,\"nodes\":[{\"key\":\"/a\",\"value\":\"1\",\"modifiedIndex\":1,\"createdIndex\":1}]}}\n"
    );
}

#[test]
fn sorted_listing_is_byte_order_at_every_level() {
    let mut s = store();
    for key in ["/q/9", "/q/10", "/q/d/b", "/q/d/a", "/q/B"] {
        ok(&mut s, put(key, "v"));
    }
    let view = s.get("/q", true, true, T0_MS).expect("dir").node;
    let keys: Vec<_> = view.nodes.as_ref().expect("children").iter().map(|n| n.key.clone().unwrap_or_default()).collect();
    assert_eq!(keys, ["/q/10", "/q/9", "/q/B", "/q/d"]);
    let inner = &view.nodes.as_ref().expect("children")[3];
    let inner_keys: Vec<_> = inner.nodes.as_ref().expect("nested").iter().map(|n| n.key.clone().unwrap_or_default()).collect();
    assert_eq!(inner_keys, ["/q/d/a", "/q/d/b"]);
    // Non-recursive: child dirs without their nodes.
    let flat = s.get("/q", false, true, T0_MS).expect("dir").node;
    assert!(flat.nodes.expect("children").iter().all(|child| child.nodes.is_none()));
}

#[test]
fn hidden_keys_are_not_listed_but_can_be_read() {
    // etcd TestStoreGetDirectory.
    let mut s = store();
    ok(&mut s, mkdir("/foo"));
    ok(&mut s, put("/foo/bar", "X"));
    ok(&mut s, put("/foo/_hidden", "*"));
    ok(&mut s, put("/foo/baz/bat", "Y"));
    ok(&mut s, put("/foo/baz/_hidden", "*"));
    ok(&mut s, put_with("/foo/baz/ttl", "Y", |set| set.ttl_s = Some(3)));
    ok(&mut s, put("/_top", "*"));
    let view = s.get("/foo", true, false, T0_MS).expect("dir").node;
    let children = view.nodes.expect("children");
    assert_eq!(children.len(), 2);
    let baz = children.iter().find(|n| n.key.as_deref() == Some("/foo/baz")).expect("baz");
    let baz_children = baz.nodes.as_ref().expect("baz children");
    assert_eq!(baz_children.len(), 2);
    assert_eq!(baz_children.iter().find(|n| n.key.as_deref() == Some("/foo/baz/ttl")).and_then(|n| n.ttl_s), Some(3));
    assert!(s.get("/", true, false, T0_MS).expect("root").node.nodes.expect("nodes").iter().all(|n| n.key.as_deref() != Some("/_top")));
    assert_eq!(s.get("/foo/_hidden", false, false, T0_MS).expect("direct read").node.value.as_deref(), Some("*"));
}

#[test]
fn dir_with_only_hidden_children_lists_no_nodes() {
    let mut s = store();
    ok(&mut s, put("/h/_x", "1"));
    assert_eq!(
        get_json(&s, "/h", true),
        "{\"action\":\"get\",\"node\":{\"key\":\"/h\",\"dir\":true,\"modifiedIndex\":1,\"createdIndex\":1}}\n"
    );
}

// ---- in-order keys ----

#[test]
fn in_order_keys_are_zero_padded_and_sort_by_creation() {
    let mut s = store();
    ok(&mut s, put("/other", "x"));
    let first = ok(&mut s, post("/queue", "Job1"));
    let second = ok(&mut s, post("/queue", "Job2"));
    assert_eq!(first.http_status(), 201);
    assert_eq!(
        json(&first),
        "{\"action\":\"create\",\"node\":{\"key\":\"/queue/00000000000000000002\",\"value\":\"Job1\",\"modifiedIndex\":2,\"createdIndex\":2}}\n"
    );
    assert_eq!(second.node.key.as_deref(), Some("/queue/00000000000000000003"));
    let queue = s.get("/queue", false, true, T0_MS).expect("queue").node;
    assert_eq!((queue.created_index, queue.modified_index), (Some(2), Some(2)), "parent made with the first item");
    let values: Vec<_> = queue.nodes.expect("items").into_iter().filter_map(|n| n.value).collect();
    assert_eq!(values, [Arc::from("Job1"), Arc::from("Job2")]);
}

#[test]
fn in_order_dir_with_ttl() {
    let mut s = store();
    let response = ok(&mut s, V2Command::CreateInOrder { dir: "/q".into(), value: "ignored".into(), is_dir: true, ttl_s: Some(5) });
    assert!(response.node.dir);
    assert_eq!(response.node.value, None);
    assert_eq!(response.node.ttl_s, Some(5));
}

// ---- TTL and expiry ----

#[test]
fn ttl_renders_expiration_and_remaining_seconds_rounded_up() {
    let mut s = store();
    let response = ok(&mut s, put_with("/foo", "bar", |set| set.ttl_s = Some(5)));
    assert_eq!(response.node.expiration_ns, Some(T0_NS + 5_000_000_000));
    assert_eq!(response.node.ttl_s, Some(5));
    assert_eq!(s.get("/foo", false, false, T0_MS + 1).expect("foo").node.ttl_s, Some(5), "4.999 s rounds up");
    assert_eq!(s.get("/foo", false, false, T0_MS + 1000).expect("foo").node.ttl_s, Some(4));
    assert_eq!(s.get("/foo", false, false, T0_MS + 5000).expect("foo").node.ttl_s, None, "0 is left out");
    assert_eq!(s.get("/foo", false, false, T0_MS + 6500).expect("foo").node.ttl_s, Some(-1), "not swept yet");
    assert_eq!(
        json(&response),
        "{\"action\":\"set\",\"node\":{\"key\":\"/foo\",\"value\":\"bar\",\"expiration\":\"2023-11-14T22:13:25Z\",\"ttl\":5,\"modifiedIndex\":1,\"createdIndex\":1}}\n"
    );
}

#[test]
fn ttl_zero_expires_at_the_next_sweep() {
    let mut s = store();
    let response = ok(&mut s, put_with("/now", "v", |set| set.ttl_s = Some(0)));
    assert_eq!(response.node.expiration_ns, Some(T0_NS));
    assert_eq!(response.node.ttl_s, None);
    assert_eq!(s.next_deadline_ms(), Some(T0_MS));
    s.expire_until(T0_MS);
    assert_eq!(s.get("/now", false, false, T0_MS).expect_err("expired").index, 2);
}

#[test]
fn ttl_overflowing_go_nanoseconds_is_permanent() {
    let mut s = store();
    let response = ok(&mut s, put_with("/forever", "v", |set| set.ttl_s = Some(9_999_999_999)));
    assert_eq!(response.node.expiration_ns, None);
    assert_eq!(s.next_deadline_ms(), None);
    // etcd: 9223372037 s overflows the nanosecond time: permanent.
    let response = ok(&mut s, put_with("/forever2", "v", |set| set.ttl_s = Some(9_223_372_037)));
    assert_eq!(response.node.expiration_ns, None);
    // etcd: u64::MAX wraps to -1 s in Go: an expiration in the past, rendered "ttl":-1.
    let response = ok(&mut s, put_with("/past", "v", |set| set.ttl_s = Some(u64::MAX)));
    assert_eq!(response.node.expiration_ns, Some(T0_NS - 1_000_000_000));
    assert_eq!(response.node.ttl_s, Some(-1));
    assert!(json(&response).contains("\"ttl\":-1,"));
    s.expire_until(T0_MS);
    assert!(s.get("/past", false, false, T0_MS).is_err());
}

#[test]
fn set_or_update_without_ttl_makes_the_key_permanent() {
    let mut s = store();
    ok(&mut s, put_with("/k", "v", |set| set.ttl_s = Some(5)));
    ok(&mut s, put("/k", "w"));
    assert_eq!(s.next_deadline_ms(), None);
    ok(&mut s, put_with("/k", "v", |set| set.ttl_s = Some(5)));
    ok(&mut s, put_with("/k", "x", |set| set.prev_exist = Some(true)));
    assert_eq!(s.ttl_entries(), 0);
    s.expire_until(T0_MS + 10_000);
    assert!(s.get("/k", false, false, T0_MS).is_ok());
}

#[test]
fn expiry_takes_one_index_per_node_in_expiration_order() {
    // etcd TestStoreWatchExpire.
    let mut s = store();
    ok(&mut s, put_with("/foo", "bar", |set| set.ttl_s = Some(1)));
    ok(&mut s, put_with("/foofoo", "barbarbar", |set| set.ttl_s = Some(2)));
    ok(&mut s, put_with("/foodir", "", |set| {
        set.is_dir = true;
        set.ttl_s = Some(3);
    }));
    assert_eq!(s.next_deadline_ms(), Some(T0_MS + 1000));
    s.expire_until(T0_MS + 999);
    assert_eq!(s.index(), 3, "nothing due yet");
    s.expire_until(T0_MS + 3500);
    assert_eq!(s.index(), 6);
    let expected = [(4, "/foo", false), (5, "/foofoo", false), (6, "/foodir", true)];
    for (index, key, dir) in expected {
        let event = found(s.watch("/", true, index, false).expect("in history"));
        assert_eq!((event.action, event.etcd_index, event.node.key.as_deref(), event.node.dir), (Action::Expire, index, Some(key), dir));
    }
    assert_eq!(s.stats().expire_count, 3);
    assert_eq!(s.next_deadline_ms(), None);
}

#[test]
fn expire_event_shows_prev_node_with_expiration_and_no_ttl() {
    let mut s = store();
    ok(&mut s, put_with("/foo", "bar", |set| set.ttl_s = Some(5)));
    s.expire_until(T0_MS + 5400);
    let event = found(s.watch("/foo", false, 2, false).expect("history"));
    assert_eq!(
        json(&event),
        "{\"action\":\"expire\",\"node\":{\"key\":\"/foo\",\"modifiedIndex\":2,\"createdIndex\":1},\
         \"prevNode\":{\"key\":\"/foo\",\"value\":\"bar\",\"expiration\":\"2023-11-14T22:13:25Z\",\"modifiedIndex\":1,\"createdIndex\":1}}\n"
    );
}

#[test]
fn dir_expires_with_its_subtree_in_one_event() {
    let mut s = store();
    ok(&mut s, put_with("/d", "", |set| {
        set.is_dir = true;
        set.ttl_s = Some(2);
    }));
    ok(&mut s, put_with("/d/a", "1", |set| set.ttl_s = Some(2)));
    ok(&mut s, put("/d/b/c", "2"));
    let watched_inside = s.watch("/d/b/c", false, 0, false).expect("watch");
    assert_eq!(watched_inside, WatchLookup::Pending { index: 3 });
    s.expire_until(T0_MS + 2000);
    assert_eq!(s.index(), 4, "one event for the dir, none for what it held");
    assert_eq!(s.ttl_entries(), 0);
    assert_eq!(s.tree().len(), 1, "only the root is left");
    let event = found(s.watch("/d/b/c", false, 4, true).expect("live"));
    assert_eq!((event.action, event.node.key.as_deref()), (Action::Expire, Some("/d")));
    s.tree().check_invariants();
}

#[test]
fn next_deadline_rounds_up_to_whole_milliseconds() {
    let mut s = store();
    ok(&mut s, put_with("/k", "v", |set| set.ttl_s = Some(1)));
    // Stored in ns exactly now_ms * 1e6 + ttl * 1e9: a whole millisecond.
    assert_eq!(s.next_deadline_ms(), Some(T0_MS + 1000));
}

#[test]
fn small_test_clocks_still_expire() {
    let mut s = store();
    s.apply(1000, &put_with("/k", "v", |set| set.ttl_s = Some(1))).expect("set");
    assert_eq!(s.next_deadline_ms(), Some(2000));
    s.expire_until(2000);
    assert!(s.get("/k", false, false, 2000).is_err());
}

// ---- refresh ----

#[test]
fn refresh_takes_an_index_makes_no_event_and_keeps_the_value() {
    // etcd TestStoreWatchExpireRefresh / TestStoreRefresh.
    let mut s = store();
    ok(&mut s, put_with("/foo", "bar", |set| set.ttl_s = Some(1)));
    let refreshed = ok(&mut s, put_with("/foo", "", |set| {
        set.refresh = true;
        set.ttl_s = Some(10);
    }));
    // Without prevExist it is a `set` with a fresh createdIndex.
    assert_eq!(refreshed.action, Action::Set);
    assert_eq!((refreshed.node.created_index, refreshed.node.value.as_deref()), (Some(2), Some("bar")));
    assert_eq!(refreshed.http_status(), 200);
    let updated = ok(&mut s, put_with("/foo", "", |set| {
        set.refresh = true;
        set.ttl_s = Some(10);
        set.prev_exist = Some(true);
    }));
    assert_eq!((updated.action, updated.node.created_index), (Action::Update, Some(2)));
    let swapped = ok(&mut s, put_with("/foo", "", |set| {
        set.refresh = true;
        set.ttl_s = Some(10);
        set.prev_value = Some("bar".into());
    }));
    assert_eq!((swapped.action, swapped.node.value.as_deref()), (Action::CompareAndSwap, Some("bar")));
    assert_eq!(s.index(), 4);
    // Refreshes are skipped: a watch from the first refresh finds nothing until expiry.
    assert_eq!(s.watch("/foo", false, 2, false).expect("watch"), WatchLookup::Pending { index: 4 });
    s.expire_until(T0_MS + 1500);
    assert!(s.get("/foo", false, false, T0_MS).is_ok(), "the refresh moved the expiration");
    s.expire_until(T0_MS + 10_000);
    let event = found(s.watch("/foo", false, 2, false).expect("watch"));
    assert_eq!((event.action, event.etcd_index), (Action::Expire, 5));
    assert_eq!(event.prev_node.and_then(|prev| prev.value).as_deref(), Some("bar"));
}

#[test]
fn refresh_of_a_dir_via_set_is_102() {
    let mut s = store();
    ok(&mut s, mkdir("/d"));
    let error = err(&mut s, put_with("/d", "", |set| {
        set.refresh = true;
        set.ttl_s = Some(5);
    }));
    assert_eq!(error.code, 102);
}

// ---- watches and history ----

#[test]
fn watch_matches_the_exact_key_and_recursive_subtree() {
    let mut s = store();
    ok(&mut s, put("/foo/bar", "1")); // 1
    ok(&mut s, put("/foo/baz/deep", "2")); // 2
    ok(&mut s, put("/foobar", "3")); // 3
    assert_eq!(found(s.watch("/foo/bar", false, 1, false).expect("w")).etcd_index, 1);
    assert_eq!(s.watch("/foo", false, 1, false).expect("w"), WatchLookup::Pending { index: 3 }, "non-recursive dir watch ignores children");
    assert_eq!(found(s.watch("/foo", true, 2, false).expect("w")).etcd_index, 2);
    assert_eq!(s.watch("/foo", true, 3, false).expect("w"), WatchLookup::Pending { index: 3 }, "/foobar is not below /foo");
    assert_eq!(found(s.watch("/", true, 3, false).expect("w")).etcd_index, 3);
    assert_eq!(s.watch("/nothing", false, 0, false).expect("w"), WatchLookup::Pending { index: 3 });
}

#[test]
fn history_scan_quirks_match_etcd() {
    // etcd 3.4.23 answers these from its history: hidden keys reach recursive watchers,
    // and a dir delete matches any key it is a string prefix of.
    let mut s = store();
    ok(&mut s, put("/h/_x", "1")); // 1
    ok(&mut s, put("/foo/bar", "1")); // 2
    ok(&mut s, del("/foo", |d| d.recursive = true)); // 3
    assert_eq!(found(s.watch("/h", true, 1, false).expect("w")).node.key.as_deref(), Some("/h/_x"));
    assert_eq!(found(s.watch("/foobar", false, 2, false).expect("w")).etcd_index, 3);
    assert_eq!(found(s.watch("/foo/nothere", false, 2, false).expect("w")).etcd_index, 3);
    assert!(matches!(s.watch("/fo", true, 2, false).expect("w"), WatchLookup::Pending { .. }));
    // Registered (live) watchers follow the watcher hub instead.
    assert!(matches!(s.watch("/h", true, 1, true).expect("w"), WatchLookup::Pending { .. }));
    assert!(matches!(s.watch("/foobar", false, 3, true).expect("w"), WatchLookup::Pending { .. }));
    assert_eq!(found(s.watch("/h/_x", false, 1, true).expect("w")).etcd_index, 1, "the exact hidden key is seen");
}

#[test]
fn dir_delete_wakes_watchers_inside_it() {
    let mut s = store();
    ok(&mut s, put("/dir/a/b", "1"));
    let pending = s.watch("/dir/a/b", false, 0, false).expect("w");
    assert_eq!(pending, WatchLookup::Pending { index: 1 });
    ok(&mut s, del("/dir", |d| d.recursive = true));
    let event = found(s.watch("/dir/a/b", false, 2, true).expect("w"));
    assert_eq!(
        json(&event),
        "{\"action\":\"delete\",\"node\":{\"key\":\"/dir\",\"dir\":true,\"modifiedIndex\":2,\"createdIndex\":1},\
         \"prevNode\":{\"key\":\"/dir\",\"dir\":true,\"modifiedIndex\":1,\"createdIndex\":1}}\n"
    );
}

#[test]
fn recursive_live_watch_skips_hidden_keys() {
    // etcd TestStoreWatchExpireWithHiddenKey and watcher_hub_test TestIsHidden.
    let mut s = store();
    ok(&mut s, put_with("/_foo", "bar", |set| set.ttl_s = Some(1)));
    ok(&mut s, put_with("/foofoo", "barbarbar", |set| set.ttl_s = Some(2)));
    s.expire_until(T0_MS + 1000);
    assert!(matches!(s.watch("/", true, 3, true).expect("w"), WatchLookup::Pending { index: 3 }));
    s.expire_until(T0_MS + 2000);
    let event = found(s.watch("/", true, 3, true).expect("w"));
    assert_eq!((event.action, event.node.key.as_deref()), (Action::Expire, Some("/foofoo")));
    // A watcher below the hidden segment sees what is under it.
    ok(&mut s, put("/_h/x", "1"));
    assert_eq!(found(s.watch("/_h", true, 5, true).expect("w")).etcd_index, 5);
    assert!(matches!(s.watch("/", true, 5, true).expect("w"), WatchLookup::Pending { .. }));
}

#[test]
fn a_new_history_size_applies_to_the_kept_events_at_once() {
    let mut store = Store::new(5);
    for n in 0..20 {
        ok(&mut store, put(&format!("/k{n}"), "v"));
    }
    let index = store.index();
    assert!(store.watch("/", true, index - 5, false).is_err(), "window of 5");
    store.set_history_max(10);
    assert!(store.watch("/", true, index - 9, false).is_ok(), "the kept events count at once");
    assert!(store.watch("/", true, index - 10, false).is_err());
    store.set_history_max(3);
    assert!(store.watch("/", true, index - 3, false).is_err(), "shrunk");
    assert!(store.watch("/", true, index - 2, false).is_ok());
}

#[test]
fn history_window_is_exactly_history_max_events() {
    // etcd: with C = 2307, waitIndex 1307 fails and 1308 works.
    let mut s = store();
    for i in 0..2307 {
        ok(&mut s, put("/k", &i.to_string()));
    }
    assert_eq!(s.index(), 2307);
    assert_eq!(s.history_oldest_index(), Some(1308));
    let error = s.watch("/k", false, 1307, false).expect_err("cleared");
    assert_eq!(
        error.to_json(),
        "{\"errorCode\":401,\"message\":\"The event in requested index is outdated and cleared\",\
         \"cause\":\"the requested history has been cleared [1308/1307]\",\"index\":2307}\n"
    );
    assert_eq!(error.http_status(), 400);
    assert_eq!(found(s.watch("/k", false, 1308, false).expect("kept")).etcd_index, 1308);
    // Live watchers read the slack, older entries kept only for them.
    assert_eq!(found(s.watch("/k", false, 1, true).expect("slack")).etcd_index, 1);
}

#[test]
fn history_slack_keeps_ten_thousand_events_beyond_the_window_for_waiting_watchers() {
    let mut s = store();
    let total = 1000 + super::history::SLACK_ENTRIES_MIN as u64 + 500;
    for i in 0..total {
        ok(&mut s, put("/k", &i.to_string()));
    }
    let oldest = total - 1000 - super::history::SLACK_ENTRIES_MIN as u64 + 1;
    assert_eq!(s.history_len(), 1000 + super::history::SLACK_ENTRIES_MIN);
    assert_eq!(found(s.watch("/k", false, oldest, true).expect("slack")).etcd_index, oldest);
    let error = s.watch("/k", false, oldest - 1, true).expect_err("beyond the slack");
    assert_eq!(error.cause, Some(format!("the requested history has been cleared [{oldest}/{}]", oldest - 1)));
    // A new watch still sees etcd's window only.
    assert_eq!(s.watch("/k", false, total - 1000, false).expect_err("cleared").code, 401);
}

#[test]
fn a_waiting_watch_behind_the_slack_goes_on_when_its_key_proves_nothing_was_lost_for_it() {
    let mut s = store();
    ok(&mut s, put("/quiet", "1"));
    ok(&mut s, put("/touched", "1"));
    ok(&mut s, mkdir("/dir"));
    let since = s.index() + 1;
    ok(&mut s, put("/touched", "2"));
    let total = 1000 + super::history::SLACK_ENTRIES_MIN as u64 + 10;
    for i in 0..total {
        ok(&mut s, put(&format!("/fleet/m{i}"), "up"));
    }
    // /quiet was there all along and not modified since: nothing of its was dropped.
    let Ok(WatchLookup::Pending { index }) = s.watch_live("/quiet", false, since, true) else {
        panic!("/quiet goes on waiting")
    };
    assert_eq!(index, s.index());
    // From there (the server's watch rescans after `index`), its next event is found.
    ok(&mut s, put("/quiet", "2"));
    assert_eq!(found(s.watch_live("/quiet", false, index + 1, true).expect("found")).node.value.as_deref(), Some("2"));
    // Modified in the dropped range, a directory (its TTL update keeps its index), a key
    // that was not there, or a recursive watch: their first event may be lost.
    for (key, recursive, existed) in [("/touched", false, true), ("/dir", false, true), ("/absent", false, false), ("/quiet", true, true)] {
        let error = s.watch_live(key, recursive, since, existed).expect_err(key);
        assert_eq!(error.code, 401, "{key}");
    }
    // A new watch with that waitIndex gets etcd's 401 as before.
    assert_eq!(s.watch("/quiet", false, since, false).expect_err("cleared").code, 401);
}

#[test]
fn history_slack_is_bounded_in_bytes_so_large_values_keep_about_the_window() {
    // 4 MiB values, window 10: the window keeps its 10 events (etcd's 401 boundary is
    // unchanged), the slack for live watchers only what fits in SLACK_BYTES_MAX.
    let mut s = Store::new(10);
    let value = "v".repeat(4 * 1024 * 1024);
    for _ in 0..30 {
        ok(&mut s, put("/big", &value));
    }
    assert_eq!(s.history_oldest_index(), Some(21));
    assert_eq!(found(s.watch("/big", false, 21, false).expect("window")).etcd_index, 21);
    // Each event counts its value and its previous value (shared, but counted twice) and keys.
    let slack_events = super::history::SLACK_BYTES_MAX / (2 * value.len() + 8);
    assert_eq!(slack_events, 7);
    assert_eq!(s.history_len(), 10 + slack_events);
    let oldest_kept = 30 - 10 - slack_events as u64 + 1;
    assert_eq!(found(s.watch("/big", false, oldest_kept, true).expect("slack")).etcd_index, oldest_kept);
    assert_eq!(s.watch("/big", false, oldest_kept - 1, true).expect_err("beyond the slack").code, 401);
}

#[test]
fn events_share_values_with_the_store_and_with_each_other() {
    let mut s = store();
    ok(&mut s, put("/k", "first"));
    ok(&mut s, put("/k", "second"));
    let first = found(s.watch("/k", false, 1, false).expect("1"));
    let second = found(s.watch("/k", false, 2, false).expect("2"));
    let (first_value, previous) = (first.node.value.expect("v"), second.prev_node.and_then(|prev| prev.value).expect("prev"));
    assert!(Arc::ptr_eq(&first_value, &previous), "the prevNode of event 2 is event 1's value");
    let stored = s.get("/k", false, false, T0_MS).expect("get").node.value.expect("v");
    assert!(Arc::ptr_eq(&stored, &second.node.value.expect("v")), "the store's node is event 2's value");
    // A refresh keeps the value without copying it.
    ok(&mut s, put_with("/k", "", |set| {
        set.refresh = true;
        set.ttl_s = Some(100);
    }));
    let refreshed = s.get("/k", false, false, T0_MS).expect("get").node.value.expect("v");
    assert!(Arc::ptr_eq(&stored, &refreshed));
}

#[test]
fn history_serializes_as_before_and_loading_shares_values_again() {
    let mut history = EventHistory::new(3);
    let view = |value: &str, index| NodeView {
        key: Some("/k".into()),
        value: Some(Arc::from(value)),
        modified_index: Some(index),
        created_index: Some(1),
        ..NodeView::default()
    };
    for index in 1..=6u64 {
        let prev_node = (index > 1).then(|| view(&format!("v{}", index - 1), index - 1));
        history.push(V2Response { action: Action::Set, node: view(&format!("v{index}"), index), prev_node, etcd_index: index }, false);
    }
    // The fields the format had before the slack got its byte bound, in the same order.
    let json = serde_json::to_value(&history).expect("serialize");
    let fields: Vec<&String> = json.as_object().expect("object").keys().collect();
    assert_eq!(fields, ["entries", "window_max"]);
    let loaded: EventHistory = serde_json::from_value(json).expect("deserialize");
    assert_eq!(loaded, history);
    let (previous, next) = (loaded.find("/k", false, 4, Some(true), 6), loaded.find("/k", false, 5, Some(true), 6));
    let written = previous.expect("ok").expect("4").node.value.clone().expect("v");
    let repeated = next.expect("ok").expect("5").prev_node.clone().and_then(|prev| prev.value).expect("v");
    assert!(Arc::ptr_eq(&written, &repeated));
}

#[test]
fn refresh_counts_in_the_history_window() {
    // etcd adds refreshes to the history (flagged), so they use up the 1000 slots.
    let mut s = Store::new(3);
    ok(&mut s, put_with("/k", "v", |set| set.ttl_s = Some(100))); // 1
    for _ in 0..3 {
        ok(&mut s, put_with("/k", "", |set| {
            set.refresh = true;
            set.ttl_s = Some(100);
        }));
    }
    assert_eq!(s.index(), 4);
    assert_eq!(s.watch("/k", false, 1, false).expect_err("cleared").code, 401);
    assert!(matches!(s.watch("/k", false, 2, false).expect("ok"), WatchLookup::Pending { index: 4 }));
}

#[test]
fn watch_from_zero_waits_for_the_next_index() {
    let mut s = store();
    ok(&mut s, put("/k", "v"));
    assert_eq!(s.watch("/k", false, 0, false).expect("w"), WatchLookup::Pending { index: 1 });
    assert_eq!(s.watch("/k", false, 5, false).expect("w"), WatchLookup::Pending { index: 1 }, "future index waits");
}

#[test]
fn event_history_ports_scan_history() {
    // etcd event_test.go TestScanHistory (indices 1..6, delete of dir /foo at 6).
    let mut history = EventHistory::new(100);
    let event = |action, key: &str, index, dir_prev: bool| V2Response {
        action,
        node: NodeView { key: Some(key.into()), modified_index: Some(index), created_index: Some(index), ..NodeView::default() },
        prev_node: dir_prev.then(|| NodeView { key: Some(key.into()), dir: true, ..NodeView::default() }),
        etcd_index: index,
    };
    for (index, key) in [(1, "/foo"), (2, "/foo/bar"), (3, "/foo/foo"), (4, "/foo/bar/bar"), (5, "/foo/foo/foo")] {
        history.push(event(Action::Create, key, index, false), false);
    }
    history.push(event(Action::Delete, "/foo", 6, true), false);
    let at = |key: &str, recursive, index| history.find(key, recursive, index, None, 6).expect("no 401").map(|e| e.etcd_index);
    assert_eq!(at("/foo", false, 1), Some(1));
    assert_eq!(at("/foo/bar", false, 1), Some(2));
    assert_eq!(at("/foo/bar", true, 3), Some(4));
    assert_eq!(at("/foo/foo/foo", false, 6), Some(6));
    assert_eq!(at("/foo/bar", true, 7), None);
}

#[test]
fn event_history_ports_index_cleared_and_full_queue() {
    // TestEventIndexHistoryCleared: window 5, six events, index 1 is cleared.
    let mut history = EventHistory::new(5);
    let event = |index| V2Response {
        action: Action::Create,
        node: NodeView { key: Some("/foo".into()), ..NodeView::default() },
        prev_node: None,
        etcd_index: index,
    };
    for index in 1..=6 {
        history.push(event(index), false);
    }
    assert_eq!(history.find("/foo", false, 1, None, 6).expect_err("cleared").code, 401);
    // TestFullEventQueue: a small queue keeps answering for the previous index.
    let mut history = EventHistory::new(10);
    let total = 2 * (10 + super::history::SLACK_ENTRIES_MIN as u64);
    for index in 1..=total {
        history.push(event(index), false);
        if index > 1 {
            let previous = history.find("/foo", true, index - 1, None, index).expect("kept");
            assert_eq!(previous.map(|e| e.etcd_index), Some(index - 1));
        }
    }
    assert_eq!(history.len(), 10 + super::history::SLACK_ENTRIES_MIN, "the window and the slack");
}

#[test]
fn matchers_follow_etcd_is_hidden() {
    let event = |key: &str| V2Response {
        action: Action::Set,
        node: NodeView { key: Some(key.into()), ..NodeView::default() },
        prev_node: None,
        etcd_index: 1,
    };
    // watcher_hub_test TestIsHidden cases, through the live matcher.
    assert!(!live_matches(&event("/_foo"), "/", true));
    assert!(!live_matches(&event("/_foo/foo"), "/", true));
    assert!(!live_matches(&event("/foo/_bar"), "/foo", true));
    assert!(live_matches(&event("/_foo/bar"), "/_foo", true));
    assert!(live_matches(&event("/_foo"), "/_foo", false));
    assert!(!live_matches(&event("/foo/bar"), "/foo", false));
    assert!(scan_matches(&event("/foo/_bar"), "/foo", true));
    assert!(scan_matches(&event("/a"), "/", true));
}

// ---- paths, stats, wire ----

#[test]
fn keys_are_cleaned_defensively() {
    assert_eq!(clean_path(""), "/");
    assert_eq!(clean_path("a//b/./c/"), "/a/b/c");
    assert_eq!(clean_path("/../../x/.."), "/");
    assert_eq!(clean_path("/a/../b"), "/b");
    for key in ["/a", "/a/b", "/_x/é", "/a/", "//a", "/a/.", "/./a", "/a/..", "/..", "a", "/", "/a//b", "/a.b/..c"] {
        assert_eq!(clean_path(key), clean_segments(key), "{key}");
    }
    let mut s = store();
    ok(&mut s, put("a//b/", "v"));
    assert_eq!(s.get("/a/b", false, false, T0_MS).expect("cleaned").node.value.as_deref(), Some("v"));
    assert_eq!(err(&mut s, put("/..", "v")).code, 107);
    for key in ["", "//", "/./..", "\u{0}", "/\u{10FFFF}/x"] {
        let _ = s.apply(T0_MS, &put(key, "v"));
        let _ = s.apply(T0_MS, &post(key, "v"));
        let _ = s.apply(T0_MS, &del(key, |d| d.recursive = true));
        let _ = s.get(key, true, true, T0_MS);
        let _ = s.watch(key, true, 1, false);
    }
    s.tree().check_invariants();
}

#[test]
fn stats_count_as_etcd_counts() {
    // The same requests as a probe of etcd 3.4.23, whose counters are in the comments.
    let mut s = store();
    ok(&mut s, mkdir("/d1")); // set ok
    ok(&mut s, put_with("/d1", "", |c| {
        c.is_dir = true;
        c.prev_exist = Some(true);
        c.ttl_s = Some(100);
    })); // update ok
    err(&mut s, put_with("/d1", "x", |c| c.prev_exist = Some(true))); // 102, counted as success
    err(&mut s, put_with("/f1", "y", |c| c.prev_exist = Some(true))); // 100, update fail
    err(&mut s, put_with("/", "y", |c| c.prev_exist = Some(true))); // 107, counted as success
    err(&mut s, del("/", |c| c.prev_value = Some("x".into()))); // CAD 102, counted as success
    err(&mut s, put_with("/", "y", |c| c.prev_value = Some("x".into()))); // CAS 107, success
    ok(&mut s, put("/f1", "a")); // set ok
    err(&mut s, put_with("/f1/x", "1", |c| c.prev_value = Some("q".into()))); // CAS 104: fail
    err(&mut s, put("/f1/x", "1")); // set: 104 from the lookup: fail
    err(&mut s, put_with("/f1/x", "1", |c| c.prev_exist = Some(false))); // create 104: create fail + set fail
    err(&mut s, del("/f1/x", |_| {})); // delete fail
    err(&mut s, del("/", |_| {})); // 107: counted as success
    let stats = s.stats();
    assert_eq!((stats.sets_success, stats.sets_fail), (2, 2));
    assert_eq!((stats.update_success, stats.update_fail), (3, 1));
    assert_eq!((stats.create_success, stats.create_fail), (0, 1));
    assert_eq!((stats.compare_and_swap_success, stats.compare_and_swap_fail), (1, 1));
    assert_eq!((stats.compare_and_delete_success, stats.compare_and_delete_fail), (1, 0));
    assert_eq!((stats.delete_success, stats.delete_fail), (1, 1));
}

#[test]
fn json_escapes_like_go() {
    // etcd's bytes for value "a\b\f\x01\x1f\x7f\n\r\t<>&\"\\\u2028\u2029é😀".
    let mut s = store();
    let value = "a\u{8}\u{c}\u{1}\u{1f}\u{7f}\n\r\t<>&\"\\\u{2028}\u{2029}é😀";
    let response = ok(&mut s, put("/esc", value));
    assert_eq!(
        json(&response),
        "{\"action\":\"set\",\"node\":{\"key\":\"/esc\",\"value\":\"a\\u0008\\u000c\\u0001\\u001f\u{7f}\\n\\r\\t\\u003c\\u003e\\u0026\\\"\\\\\\u2028\\u2029é😀\",\"modifiedIndex\":1,\"createdIndex\":1}}\n"
    );
    let error = V2Error::new(100, Some("/a<b>".to_string()), 3);
    assert_eq!(error.to_json(), "{\"errorCode\":100,\"message\":\"Key not found\",\"cause\":\"/a\\u003cb\\u003e\",\"index\":3}\n");
}

#[test]
fn replacement_character_is_escaped_as_go_escapes_invalid_utf8() {
    // etcd answers a key holding the invalid byte 0xff with `\ufffd` in place of that byte;
    // the server names such a key (in a "Key not found") decoded lossily, as U+FFFD.
    let mut s = store();
    let response = ok(&mut s, put("/bad\u{fffd}key", "v"));
    assert!(json(&response).contains("\"key\":\"/bad\\ufffdkey\""), "{}", json(&response));
}

#[test]
fn expiration_is_go_rfc3339_nano() {
    assert_eq!(format_expiration(0), "1970-01-01T00:00:00Z");
    assert_eq!(format_expiration(1_500_000_000_123_000_000), "2017-07-14T02:40:00.123Z");
    assert_eq!(format_expiration(1_795_459_802_030_937_741), "2026-11-23T18:50:02.030937741Z");
    assert_eq!(format_expiration(1_795_459_802_000_000_010), "2026-11-23T18:50:02.00000001Z");
}

#[test]
fn errors_have_etcds_messages_and_statuses() {
    let cases: [(u16, &str, u16); 18] = [
        (100, "Key not found", 404),
        (101, "Compare failed", 412),
        (102, "Not a file", 403),
        (104, "Not a directory", 400),
        (105, "Key already exists", 412),
        (107, "Root is read only", 400),
        (108, "Directory not empty", 403),
        (110, "The request requires user authentication", 401),
        (201, "PrevValue is Required in POST form", 400),
        (202, "The given TTL in POST form is not a number", 400),
        (203, "The given index in POST form is not a number", 400),
        (209, "Invalid field", 400),
        (210, "Invalid POST form", 400),
        (211, "Value provided on refresh", 400),
        (212, "A TTL must be provided on refresh", 400),
        (300, "Raft Internal Error", 500),
        (301, "During Leader Election", 500),
        (400, "watcher is cleared due to etcd recovery", 400),
    ];
    for (code, message, status) in cases {
        let error = V2Error::new(code, None, 0);
        assert_eq!((error.message(), error.http_status()), (message, status), "{code}");
    }
    // etcd: the 201 body, with Go's escaping of the quotes in the cause.
    let error = V2Error::new(201, Some("\"prevValue\" cannot be empty".to_string()), 0);
    assert_eq!(
        error.to_json(),
        "{\"errorCode\":201,\"message\":\"PrevValue is Required in POST form\",\"cause\":\"\\\"prevValue\\\" cannot be empty\",\"index\":0}\n"
    );
}

#[test]
fn store_round_trips_through_serde() {
    let mut s = store();
    ok(&mut s, put_with("/a/b", "1", |set| set.ttl_s = Some(5)));
    ok(&mut s, post("/q", "job"));
    ok(&mut s, del("/a/b", |_| {}));
    let encoded = serde_json::to_string(&s).expect("encode");
    let decoded: Store = serde_json::from_str(&encoded).expect("decode");
    assert_eq!(decoded, s);
}
