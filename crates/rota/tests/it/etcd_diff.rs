//! Differential tests: each scenario runs against a fresh etcd 3.4 and a fresh rota, and the
//! normalized transcripts (status, headers, bodies; see `normalize`) must be equal. etcd is
//! the reference: a disagreement is a rota bug (or a normalizer bug, which running with
//! `ROTA_IT_AGAINST=etcd` exposes: etcd against etcd must always agree).
//!
//! Scenario rules: deterministic requests; indices derived from earlier responses or from
//! `s.idx(offset)`; prevValue tests use non-numeric values (the normalizer reads all-digit
//! 101 causes as index comparisons); TTL waits are watches with a bound, never sleeps, and
//! with a `waitIndex` past the last write (a watch registered after the expiry must still
//! see it).

use crate::http::Request;
use crate::session::{etcd_index, modified_index, node_key, run_diff, Session};

macro_rules! diff_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_diff(stringify!($name), scenarios::$name);
            }
        )*
    };
}

diff_tests!(
    tutorial_service_discovery_under_frontends,
    tutorial_ttl_expiry_wakes_a_waiting_watcher,
    tutorial_in_order_keys_under_queue,
    set_new_is_201_and_set_over_existing_resets_created_index,
    create_with_prev_exist_false_fails_105_when_present,
    update_with_prev_exist_true_needs_the_key,
    compare_and_swap_on_prev_value,
    compare_and_swap_on_prev_index,
    compare_failed_cause_lists_each_failed_condition,
    compare_and_swap_on_missing_key_dir_and_with_prev_exist,
    compare_and_delete_rules,
    prev_index_zero_counts_as_absent,
    empty_prev_value_is_error_201,
    mkdir_and_writes_onto_directories,
    delete_rules_table,
    recursive_delete_removes_the_subtree,
    parents_are_created_implicitly_with_the_child_index,
    writes_below_a_file_are_error_104,
    root_is_read_only_but_accepts_post,
    key_not_found_cause_is_the_first_missing_prefix,
    ttl_zero_expires_at_the_next_sweep,
    empty_ttl_or_no_ttl_makes_a_key_permanent,
    ttl_overflowing_time_makes_a_key_permanent,
    directory_ttl_update_keeps_modified_index,
    directory_expiry_removes_the_subtree_and_wakes_child_watchers,
    refresh_parameter_errors,
    refresh_takes_an_index_but_makes_no_event,
    refresh_does_not_wake_a_sleeping_watcher,
    dir_removal_wakes_only_watchers_of_paths_that_were_in_it,
    hidden_keys_are_left_out_of_listings_and_recursive_watches,
    sorted_recursive_listing_is_in_byte_order,
    unsorted_listing_has_the_same_set_of_nodes,
    wait_index_in_history_answers_at_once,
    wait_index_in_the_future_waits,
    history_older_than_1000_events_is_error_401,
    non_recursive_dir_watch_ignores_children,
    recursive_dir_watch_sees_children,
    deleting_a_dir_wakes_a_child_watcher,
    watch_on_a_missing_key_waits_for_its_creation,
    stream_watch_sends_one_line_per_event,
    invalid_bool_parameters_are_error_209,
    invalid_ttl_is_error_202,
    invalid_indices_are_error_203,
    undecodable_form_body_is_error_210,
    go_parse_bool_spellings_are_accepted,
    non_form_bodies_are_ignored,
    delete_ignores_a_form_body,
    form_body_wins_over_query_string,
    post_ignores_prev_conditions_and_makes_in_order_dirs,
    unsupported_method_is_405_with_allow,
    unknown_paths_are_plain_404,
    double_slash_redirects_301_to_the_clean_path,
    head_answers_like_get_without_body,
    options_answers_cors_preflight,
    percent_encoded_keys_and_trailing_slash,
    json_escapes_html_characters,
    version_and_health_shapes,
    members_shape,
    members_add_without_urls,
    stats_self_shape,
    quorum_get_has_the_same_shape,
    quorum_get_ignores_wait,
    missing_value_is_empty_string_and_dir_ignores_value,
);

/// The scenarios (one function each, named like its test).
pub mod scenarios {
    use super::*;

    pub fn tutorial_service_discovery_under_frontends(s: &mut Session) {
        s.get("/v2/keys/");
        s.put("/v2/keys/frontends/fe1", "value=10.0.1.1");
        s.put("/v2/keys/frontends/fe2", "value=10.0.1.2");
        s.get("/v2/keys/frontends");
        s.get("/v2/keys/frontends?sorted=true");
        s.put("/v2/keys/frontends/fe1", "value=10.0.1.3");
        s.get("/v2/keys/frontends/fe1");
        s.put("/v2/keys/frontends/fe3", "value=10.0.1.4&ttl=300");
        s.get("/v2/keys/frontends?recursive=true&sorted=true");
        s.delete("/v2/keys/frontends/fe2");
        s.get("/v2/keys/frontends?sorted=true");
        s.get("/v2/keys/?recursive=true&sorted=true");
    }

    pub fn tutorial_ttl_expiry_wakes_a_waiting_watcher(s: &mut Session) {
        let set = s.put("/v2/keys/foo", "value=bar&ttl=1");
        // From the set's next index: a watch that registers only after the expiry (rota
        // expires at exactly 1 s; a loaded machine can be that late) finds the event in the
        // history instead of waiting for a later one. Registered in time, it waits.
        let w = s.watch_started_at_any_index(&format!(
            "/v2/keys/foo?wait=true&waitIndex={}",
            modified_index(&set) + 1
        ));
        s.watch_event(w);
        s.get("/v2/keys/foo");
        // The expire event is in the history.
        let target = format!("/v2/keys/foo?wait=true&waitIndex={}", s.idx(2));
        let w = s.watch(&target);
        s.watch_event(w);
    }

    pub fn tutorial_in_order_keys_under_queue(s: &mut Session) {
        let first = s.post("/v2/keys/queue", "value=Job1");
        s.post("/v2/keys/queue", "value=Job2");
        let third = s.post("/v2/keys/queue", "value=Job3");
        s.get("/v2/keys/queue?sorted=true");
        s.get("/v2/keys/queue?recursive=true&sorted=true");
        s.get("/v2/keys/queue");
        s.delete(&format!("/v2/keys{}", node_key(&first)));
        s.get("/v2/keys/queue?sorted=true");
        s.get(&format!("/v2/keys{}", node_key(&third)));
        s.post("/v2/keys/queue", "value=Job4&ttl=300");
        s.get("/v2/keys/queue?sorted=true");
    }

    pub fn set_new_is_201_and_set_over_existing_resets_created_index(s: &mut Session) {
        s.put("/v2/keys/k", "value=one");
        s.put("/v2/keys/k", "value=two");
        s.put("/v2/keys/k", "value=two");
        s.get("/v2/keys/k");
    }

    pub fn create_with_prev_exist_false_fails_105_when_present(s: &mut Session) {
        s.put("/v2/keys/c", "value=one&prevExist=false");
        s.put("/v2/keys/c", "value=two&prevExist=false");
        s.put("/v2/keys/d", "dir=true");
        s.put("/v2/keys/d", "value=x&prevExist=false");
        s.put("/v2/keys/d", "dir=true&prevExist=false");
        s.put("/v2/keys/c", "value=three&prevExist=false&prevValue=one");
        s.get("/v2/keys/c");
    }

    pub fn update_with_prev_exist_true_needs_the_key(s: &mut Session) {
        s.put("/v2/keys/u", "value=one&prevExist=true");
        s.put("/v2/keys/u", "value=one");
        s.put("/v2/keys/u", "value=two&prevExist=true");
        s.get("/v2/keys/u");
        s.put("/v2/keys/ud", "dir=true");
        s.put("/v2/keys/ud", "value=x&prevExist=true");
        s.put("/v2/keys/ud", "dir=true&prevExist=true");
        s.get("/v2/keys/ud");
    }

    pub fn compare_and_swap_on_prev_value(s: &mut Session) {
        s.put("/v2/keys/cas", "value=one");
        s.put("/v2/keys/cas", "value=two&prevValue=one");
        s.put("/v2/keys/cas", "value=three&prevValue=one");
        s.put("/v2/keys/cas", "value=three&prevValue=two&prevExist=true");
        s.get("/v2/keys/cas");
    }

    pub fn compare_and_swap_on_prev_index(s: &mut Session) {
        let r = s.put("/v2/keys/ci", "value=one");
        let idx = modified_index(&r);
        s.put("/v2/keys/ci", &format!("value=two&prevIndex={}", idx + 5));
        s.put("/v2/keys/ci", &format!("value=two&prevIndex={idx}"));
        s.put("/v2/keys/ci", &format!("value=three&prevIndex={idx}"));
        s.get("/v2/keys/ci");
    }

    pub fn compare_failed_cause_lists_each_failed_condition(s: &mut Session) {
        let r = s.put("/v2/keys/both", "value=three");
        let idx = modified_index(&r);
        s.put(
            "/v2/keys/both",
            &format!("value=x&prevValue=four&prevIndex={}", idx + 7),
        );
        s.put(
            "/v2/keys/both",
            &format!("value=x&prevValue=four&prevIndex={idx}"),
        );
        s.put(
            "/v2/keys/both",
            &format!("value=x&prevValue=three&prevIndex={}", idx + 7),
        );
        s.delete(&format!(
            "/v2/keys/both?prevValue=four&prevIndex={}",
            idx + 7
        ));
        s.delete(&format!(
            "/v2/keys/both?prevValue=three&prevIndex={}",
            idx + 7
        ));
        s.delete(&format!("/v2/keys/both?prevValue=four&prevIndex={idx}"));
        s.get("/v2/keys/both");
    }

    pub fn compare_and_swap_on_missing_key_dir_and_with_prev_exist(s: &mut Session) {
        s.put("/v2/keys/nokey", "value=x&prevValue=one");
        s.put("/v2/keys/nodir/nokey", "value=x&prevIndex=3");
        s.put("/v2/keys/dir", "dir=true");
        s.put("/v2/keys/dir", "value=x&prevValue=one");
        s.put("/v2/keys/dir", "dir=true&prevValue=one");
        s.put("/v2/keys/f", "value=one");
        s.put("/v2/keys/f", "value=two&prevValue=one&prevExist=true");
        s.put("/v2/keys/f", "value=three&prevValue=one&prevExist=true");
    }

    pub fn compare_and_delete_rules(s: &mut Session) {
        let r = s.put("/v2/keys/cad", "value=one");
        let idx = modified_index(&r);
        s.delete("/v2/keys/cad?prevValue=two");
        s.delete(&format!("/v2/keys/cad?prevIndex={}", idx + 3));
        s.delete("/v2/keys/cad?prevValue=one");
        s.get("/v2/keys/cad");
        let r = s.put("/v2/keys/cad2", "value=one");
        let idx = modified_index(&r);
        s.delete(&format!("/v2/keys/cad2?prevIndex={idx}&dir=true"));
        s.delete("/v2/keys/missing?prevValue=one");
        s.put("/v2/keys/cdir", "dir=true");
        s.delete("/v2/keys/cdir?prevValue=one");
        s.delete("/v2/keys/cdir?prevValue=one&recursive=true");
        s.delete("/v2/keys/cdir?prevIndex=1&dir=true");
        s.put("/v2/keys/cad3", "value=one");
        s.delete("/v2/keys/cad3?prevValue=one&prevExist=false");
    }

    pub fn prev_index_zero_counts_as_absent(s: &mut Session) {
        s.put("/v2/keys/z", "value=one&prevIndex=0");
        s.put("/v2/keys/z", "value=two&prevIndex=0");
        s.put("/v2/keys/z", "value=three&prevIndex=0&prevExist=true");
        s.put("/v2/keys/z2", "value=one&prevIndex=0&prevExist=true");
        s.delete("/v2/keys/z?prevIndex=0");
    }

    pub fn empty_prev_value_is_error_201(s: &mut Session) {
        s.put("/v2/keys/e", "value=one");
        s.put("/v2/keys/e", "value=two&prevValue=");
        s.delete("/v2/keys/e?prevValue=");
        s.put("/v2/keys/missing", "value=two&prevValue=");
        s.get("/v2/keys/e");
    }

    pub fn mkdir_and_writes_onto_directories(s: &mut Session) {
        s.put("/v2/keys/dir", "dir=true");
        s.put("/v2/keys/dir", "dir=true");
        s.put("/v2/keys/dir", "value=x");
        s.put("/v2/keys/dir", "");
        s.get("/v2/keys/dir");
        s.put("/v2/keys/file", "value=x");
        s.put("/v2/keys/file", "dir=true");
        s.get("/v2/keys/file");
        s.put("/v2/keys/dir/sub", "dir=true&value=ignored");
        s.get("/v2/keys/dir?recursive=true");
    }

    pub fn delete_rules_table(s: &mut Session) {
        for flags in ["", "?dir=true", "?recursive=true"] {
            s.put("/v2/keys/file", "value=x");
            s.delete(&format!("/v2/keys/file{flags}"));
            s.put("/v2/keys/empty", "dir=true");
            s.delete(&format!("/v2/keys/empty{flags}"));
            s.put("/v2/keys/full/child", "value=x");
            s.delete(&format!("/v2/keys/full{flags}"));
            s.delete(&format!("/v2/keys/missing{flags}"));
            s.delete(&format!("/v2/keys/{flags}"));
            s.get("/v2/keys/?recursive=true&sorted=true");
            s.delete("/v2/keys/full?recursive=true");
            s.delete("/v2/keys/empty?recursive=true");
        }
    }

    pub fn recursive_delete_removes_the_subtree(s: &mut Session) {
        s.put("/v2/keys/r/a/b/c", "value=1x");
        s.put("/v2/keys/r/a/d", "value=2x");
        s.put("/v2/keys/r/e", "dir=true");
        s.delete("/v2/keys/r/a?recursive=true");
        s.get("/v2/keys/r?recursive=true&sorted=true");
        s.get("/v2/keys/r/a/b/c");
        s.delete("/v2/keys/r?recursive=true");
        s.get("/v2/keys/r");
    }

    pub fn parents_are_created_implicitly_with_the_child_index(s: &mut Session) {
        s.put("/v2/keys/a/b/c/d", "value=deep");
        s.get("/v2/keys/a?recursive=true");
        s.get("/v2/keys/a");
        s.get("/v2/keys/a/b/c");
        s.put("/v2/keys/a/b/x", "value=side");
        s.get("/v2/keys/a/b?sorted=true");
    }

    pub fn writes_below_a_file_are_error_104(s: &mut Session) {
        s.put("/v2/keys/frontends/fe1", "value=10.0.1.1");
        s.get("/v2/keys/frontends/fe1/x");
        s.put("/v2/keys/frontends/fe1/x", "value=y");
        s.put("/v2/keys/frontends/fe1/x/y", "value=y");
        s.delete("/v2/keys/frontends/fe1/x");
        s.post("/v2/keys/frontends/fe1", "value=job");
        s.get("/v2/keys/frontends?recursive=true");
    }

    pub fn root_is_read_only_but_accepts_post(s: &mut Session) {
        s.get("/v2/keys/");
        s.get("/v2/keys");
        s.put("/v2/keys/", "value=x");
        s.put("/v2/keys", "dir=true");
        s.delete("/v2/keys/");
        s.delete("/v2/keys/?recursive=true");
        s.post("/v2/keys/", "value=rooted");
        s.get("/v2/keys/?recursive=true&sorted=true");
    }

    pub fn key_not_found_cause_is_the_first_missing_prefix(s: &mut Session) {
        s.get("/v2/keys/nonexist");
        s.get("/v2/keys/missing/deeper/key");
        s.put("/v2/keys/present/here", "value=x");
        s.get("/v2/keys/present/nope");
        s.get("/v2/keys/present/nope/deeper");
        s.delete("/v2/keys/present/nope/deeper");
        s.put("/v2/keys/present/nope/deeper", "value=x&prevExist=true");
    }

    pub fn ttl_zero_expires_at_the_next_sweep(s: &mut Session) {
        let r = s.put("/v2/keys/t0", "value=x&ttl=0");
        let idx = modified_index(&r);
        // The expire event may come before or after the watch registers (etcd sweeps every
        // ~500 ms, rota at the deadline); the event and the later 404 are compared exactly.
        let w = s.watch_started_at_any_index(&format!("/v2/keys/t0?wait=true&waitIndex={}", idx + 1));
        s.watch_event(w);
        s.get("/v2/keys/t0");
    }

    pub fn empty_ttl_or_no_ttl_makes_a_key_permanent(s: &mut Session) {
        s.put("/v2/keys/p", "value=x&ttl=100");
        s.put("/v2/keys/p", "value=y&ttl=");
        s.put("/v2/keys/p", "value=z&ttl=100");
        s.put("/v2/keys/p", "value=w");
        s.put("/v2/keys/p", "value=v&ttl=100");
        s.put("/v2/keys/p", "value=u&prevExist=true");
        s.put("/v2/keys/p", "value=t&ttl=100&prevValue=u");
        s.put("/v2/keys/p", "value=s&prevValue=t");
        s.get("/v2/keys/p");
    }

    pub fn ttl_overflowing_time_makes_a_key_permanent(s: &mut Session) {
        s.put("/v2/keys/big", "value=x&ttl=9999999999");
        s.get("/v2/keys/big");
        s.put("/v2/keys/big2", "value=x&ttl=18446744073709551615");
        s.put("/v2/keys/big3", "value=x&ttl=18446744073709551616");
    }

    pub fn directory_ttl_update_keeps_modified_index(s: &mut Session) {
        s.put("/v2/keys/tdir", "dir=true&ttl=100");
        s.put("/v2/keys/tdir/child", "value=x");
        s.put("/v2/keys/tdir", "dir=true&ttl=200&prevExist=true");
        s.get("/v2/keys/tdir");
        s.put("/v2/keys/tdir", "dir=true&prevExist=true");
        s.get("/v2/keys/tdir?recursive=true");
        s.put("/v2/keys/tdir", "dir=true&ttl=100");
    }

    pub fn directory_expiry_removes_the_subtree_and_wakes_child_watchers(s: &mut Session) {
        s.put("/v2/keys/edir", "dir=true&ttl=1");
        let leaf = s.put("/v2/keys/edir/sub/leaf", "value=x");
        // From the leaf's next index, so that a watch registering after the expiry (1 s
        // after the dir, with a fsynced write in between) still gets it from the history.
        let w = s.watch_started_at_any_index(&format!(
            "/v2/keys/edir/sub/leaf?wait=true&waitIndex={}",
            modified_index(&leaf) + 1
        ));
        s.watch_event(w);
        s.get("/v2/keys/edir/sub/leaf");
        s.get("/v2/keys/edir");
    }

    pub fn refresh_parameter_errors(s: &mut Session) {
        s.put("/v2/keys/rf", "value=x&ttl=100");
        s.put("/v2/keys/rf", "refresh=true&ttl=100&value=y");
        s.put("/v2/keys/rf", "refresh=true");
        s.put("/v2/keys/rf", "refresh=true&ttl=");
        s.put("/v2/keys/missing", "refresh=true&ttl=100");
        s.put("/v2/keys/rdir", "dir=true&ttl=100");
        s.put("/v2/keys/rdir", "refresh=true&ttl=100");
        s.get("/v2/keys/rf");
    }

    pub fn refresh_takes_an_index_but_makes_no_event(s: &mut Session) {
        s.put("/v2/keys/rk", "value=keep&ttl=100");
        let r = s.put("/v2/keys/rk", "refresh=true&ttl=200");
        let refresh_index = etcd_index(&r);
        s.put("/v2/keys/rk", "refresh=true&ttl=300&prevExist=true");
        s.put("/v2/keys/rk", "refresh=true&ttl=400&prevValue=keep");
        s.get("/v2/keys/rk");
        // The refreshes are not in the history: waitIndex at the first refresh waits for the
        // next real event.
        let w = s.watch(&format!("/v2/keys/rk?wait=true&waitIndex={refresh_index}"));
        s.put("/v2/keys/rk", "value=changed");
        s.watch_event(w);
    }

    pub fn refresh_does_not_wake_a_sleeping_watcher(s: &mut Session) {
        s.put("/v2/keys/rw", "value=v&ttl=100");
        let w = s.watch("/v2/keys/rw?wait=true");
        s.put("/v2/keys/rw", "refresh=true&ttl=100");
        s.put("/v2/keys/rw", "value=after");
        s.watch_event(w);
    }

    /// etcd's hub notifies the watchers of each node a recursive delete removes: a waiting
    /// watch on a path with no node under the removed directory keeps waiting.
    pub fn dir_removal_wakes_only_watchers_of_paths_that_were_in_it(s: &mut Session) {
        s.put("/v2/keys/wd/sub/b", "value=b");
        let missing = s.watch("/v2/keys/wd/sub/nope?wait=true");
        let present = s.watch("/v2/keys/wd/sub/b?wait=true");
        let dir = s.watch("/v2/keys/wd/sub?wait=true");
        s.delete("/v2/keys/wd?recursive=true");
        s.watch_event(present);
        s.watch_event(dir);
        s.put("/v2/keys/wd/sub/nope", "value=later");
        s.watch_event(missing);
    }

    pub fn hidden_keys_are_left_out_of_listings_and_recursive_watches(s: &mut Session) {
        s.put("/v2/keys/_hidden", "value=h");
        s.put("/v2/keys/dir/_h", "value=h");
        s.put("/v2/keys/dir/v", "value=v");
        s.put("/v2/keys/_hdir/inner", "value=i");
        s.get("/v2/keys/?recursive=true&sorted=true");
        s.get("/v2/keys/?sorted=true");
        s.get("/v2/keys/dir");
        s.get("/v2/keys/_hidden");
        s.get("/v2/keys/_hdir?recursive=true");
        s.get("/v2/keys/dir/_h");
        let w = s.watch("/v2/keys/dir?wait=true&recursive=true");
        s.put("/v2/keys/dir/_h2", "value=h");
        s.put("/v2/keys/dir/v2", "value=v");
        s.watch_event(w);
        let w = s.watch("/v2/keys/dir/_h?wait=true");
        s.put("/v2/keys/dir/_h", "value=h2");
        s.watch_event(w);
    }

    pub fn sorted_recursive_listing_is_in_byte_order(s: &mut Session) {
        for key in [
            "9", "10", "1", "a", "B", "_x", "z/y", "z/10", "z/9", "m/n/o",
        ] {
            s.quiet(&Request::new("PUT", &format!("/v2/keys/s/{key}")).form("value=v"));
        }
        s.get("/v2/keys/s?sorted=true");
        s.get("/v2/keys/s?recursive=true&sorted=true");
        s.get("/v2/keys/s/z?sorted=true");
    }

    pub fn unsorted_listing_has_the_same_set_of_nodes(s: &mut Session) {
        for i in 0..30 {
            s.quiet(&Request::new("PUT", &format!("/v2/keys/u/k{i}")).form("value=v"));
        }
        s.put("/v2/keys/u/d/x", "value=y");
        s.get("/v2/keys/u");
        s.get("/v2/keys/u?recursive=true");
    }

    pub fn wait_index_in_history_answers_at_once(s: &mut Session) {
        s.put("/v2/keys/h/a", "value=1x");
        s.put("/v2/keys/h/b", "value=2x");
        s.put("/v2/keys/h/a", "value=3x");
        s.delete("/v2/keys/h/b");
        let w = s.watch(&format!("/v2/keys/h/a?wait=true&waitIndex={}", s.idx(1)));
        s.watch_event(w);
        let w = s.watch(&format!("/v2/keys/h/a?wait=true&waitIndex={}", s.idx(2)));
        s.watch_event(w);
        let w = s.watch(&format!("/v2/keys/h/b?wait=true&waitIndex={}", s.idx(3)));
        s.watch_event(w);
        let w = s.watch(&format!(
            "/v2/keys/h?wait=true&recursive=true&waitIndex={}",
            s.idx(2)
        ));
        s.watch_event(w);
        let w = s.watch("/v2/keys/h/a?wait=true&waitIndex=1");
        s.watch_event(w);
        // waitIndex without wait is ignored: a plain get.
        s.get(&format!("/v2/keys/h/a?waitIndex={}", s.idx(1)));
    }

    pub fn wait_index_in_the_future_waits(s: &mut Session) {
        s.put("/v2/keys/f/a", "value=1x");
        let w = s.watch(&format!("/v2/keys/f/a?wait=true&waitIndex={}", s.idx(3)));
        s.put("/v2/keys/f/a", "value=2x");
        s.put("/v2/keys/f/a", "value=3x");
        s.watch_event(w);
    }

    pub fn history_older_than_1000_events_is_error_401(s: &mut Session) {
        const WRITERS: usize = 4;
        const WRITES: usize = 1010;
        // The first writes are sequential, so the events at the history's edge (offsets
        // 11..13) have the same keys on both servers; the rest go in parallel for speed.
        const SEQUENTIAL: usize = 40;
        let addr = s.server.addr();
        for i in 0..SEQUENTIAL {
            s.quiet(&Request::new("PUT", &format!("/v2/keys/hist/k{i}")).form("value=v"));
        }
        std::thread::scope(|scope| {
            for t in 0..WRITERS {
                scope.spawn(move || {
                    for i in (SEQUENTIAL + t..WRITES).step_by(WRITERS) {
                        let req =
                            Request::new("PUT", &format!("/v2/keys/hist/k{i}")).form("value=v");
                        let resp = crate::http::send(addr, &req).expect("bulk write");
                        assert!(resp.status() == 201, "bulk write failed: {resp:?}");
                    }
                });
            }
        });
        s.put("/v2/keys/hist/last", "value=x");
        let current = s.idx(WRITES as i64 + 1);
        for offset in [1000u64, 999, 998] {
            let w = s.watch(&format!(
                "/v2/keys/hist?wait=true&recursive=true&waitIndex={}",
                current - offset
            ));
            s.watch_event(w);
        }
        let w = s.watch(&format!(
            "/v2/keys/hist/last?wait=true&waitIndex={}",
            s.idx(1)
        ));
        s.watch_event(w);
    }

    pub fn non_recursive_dir_watch_ignores_children(s: &mut Session) {
        s.put("/v2/keys/nd", "dir=true&ttl=100");
        let w = s.watch("/v2/keys/nd?wait=true");
        s.put("/v2/keys/nd/child", "value=x");
        s.put("/v2/keys/nd", "dir=true&ttl=200&prevExist=true");
        s.watch_event(w);
    }

    pub fn recursive_dir_watch_sees_children(s: &mut Session) {
        s.put("/v2/keys/rd", "dir=true");
        let w = s.watch("/v2/keys/rd?wait=true&recursive=true");
        s.put("/v2/keys/rd/a/b", "value=x");
        s.watch_event(w);
        let w = s.watch("/v2/keys/rd?wait=true&recursive=true");
        s.delete("/v2/keys/rd/a?recursive=true");
        s.watch_event(w);
        let w = s.watch("/v2/keys/rd/a?wait=true&recursive=true");
        s.post("/v2/keys/rd/a", "value=job");
        s.watch_event(w);
    }

    pub fn deleting_a_dir_wakes_a_child_watcher(s: &mut Session) {
        s.put("/v2/keys/dd/a/b", "value=x");
        let w = s.watch("/v2/keys/dd/a/b?wait=true");
        s.delete("/v2/keys/dd?recursive=true");
        s.watch_event(w);
    }

    pub fn watch_on_a_missing_key_waits_for_its_creation(s: &mut Session) {
        let w = s.watch("/v2/keys/later?wait=true");
        s.put("/v2/keys/other", "value=x");
        s.put("/v2/keys/later", "value=now&prevExist=false");
        s.watch_event(w);
        let w = s.watch("/v2/keys/later?wait=true");
        s.put("/v2/keys/later", "value=next&prevValue=now");
        s.watch_event(w);
        let w = s.watch("/v2/keys/later?wait=true");
        s.delete("/v2/keys/later?prevValue=next");
        s.watch_event(w);
    }

    pub fn stream_watch_sends_one_line_per_event(s: &mut Session) {
        let w = s.watch("/v2/keys/st?wait=true&stream=true&recursive=true");
        s.put("/v2/keys/st/a", "value=1x");
        s.stream_event(w);
        s.put("/v2/keys/st/b", "value=2x");
        s.stream_event(w);
        s.delete("/v2/keys/st/a");
        s.stream_event(w);
    }

    pub fn invalid_bool_parameters_are_error_209(s: &mut Session) {
        s.put("/v2/keys/b", "value=x");
        for field in ["dir", "prevExist", "refresh"] {
            s.put("/v2/keys/b", &format!("value=x&{field}=maybe"));
        }
        for field in ["recursive", "sorted", "wait", "quorum", "stream", "dir"] {
            s.get(&format!("/v2/keys/b?{field}=maybe"));
        }
        s.get("/v2/keys/b?wait=true&stream=yes");
        for field in ["recursive", "dir"] {
            s.delete(&format!("/v2/keys/b?{field}=2"));
        }
        s.put("/v2/keys/b", "value=x&dir=");
        s.get("/v2/keys/b?recursive=");
        s.get("/v2/keys/b");
    }

    pub fn invalid_ttl_is_error_202(s: &mut Session) {
        for ttl in [
            "abc",
            "-1",
            "1.5",
            "%2B5",
            "99999999999999999999999",
            "1e3",
            "0x10",
            "%205",
        ] {
            s.put("/v2/keys/t", &format!("value=x&ttl={ttl}"));
        }
        s.post("/v2/keys/q", "value=x&ttl=abc");
        s.put("/v2/keys/t", "refresh=true&ttl=abc");
        s.get("/v2/keys/t");
    }

    pub fn invalid_indices_are_error_203(s: &mut Session) {
        s.put("/v2/keys/i", "value=x");
        for idx in ["abc", "-1", "1.5", "%2B5", "99999999999999999999999"] {
            s.put("/v2/keys/i", &format!("value=y&prevIndex={idx}"));
            s.delete(&format!("/v2/keys/i?prevIndex={idx}"));
            s.get(&format!("/v2/keys/i?wait=true&waitIndex={idx}"));
        }
        s.get("/v2/keys/i?waitIndex=abc");
        s.get("/v2/keys/i");
    }

    pub fn undecodable_form_body_is_error_210(s: &mut Session) {
        s.put("/v2/keys/f", "value=%zz");
        s.post("/v2/keys/q", "value=%zz");
        s.put("/v2/keys/f", "value=ok&ttl=%");
        s.send(Request::new("PUT", "/v2/keys/f?value=%zz").form("ttl=5"));
        s.get("/v2/keys/f");
        s.get("/v2/keys/f?recursive=%zz");
    }

    pub fn go_parse_bool_spellings_are_accepted(s: &mut Session) {
        for (i, spelling) in ["1", "t", "T", "TRUE", "true", "True"].iter().enumerate() {
            s.put(&format!("/v2/keys/bd{i}"), &format!("dir={spelling}"));
        }
        for (i, spelling) in ["0", "f", "F", "FALSE", "false", "False"]
            .iter()
            .enumerate()
        {
            s.put(
                &format!("/v2/keys/bf{i}"),
                &format!("value=x&dir={spelling}"),
            );
        }
        s.get("/v2/keys/?sorted=T");
        s.get("/v2/keys/bd0?recursive=1");
        s.put("/v2/keys/bf0", "value=y&prevExist=T");
        s.put("/v2/keys/bf0", "value=y&prevExist=F");
    }

    pub fn non_form_bodies_are_ignored(s: &mut Session) {
        s.send(
            Request::new("PUT", "/v2/keys/j")
                .header("Content-Type", "application/json")
                .raw_body(br#"{"value":"x"}"#.to_vec()),
        );
        s.send(
            Request::new("PUT", "/v2/keys/t")
                .header("Content-Type", "text/plain")
                .raw_body(b"value=x".to_vec()),
        );
        s.send(Request::new("PUT", "/v2/keys/n").raw_body(b"value=x".to_vec()));
        s.send(
            Request::new("PUT", "/v2/keys/q?value=fromquery")
                .header("Content-Type", "application/json")
                .raw_body(b"{}".to_vec()),
        );
        s.get("/v2/keys/?sorted=true");
    }

    pub fn delete_ignores_a_form_body(s: &mut Session) {
        s.put("/v2/keys/dd", "dir=true");
        s.send(Request::new("DELETE", "/v2/keys/dd").form("dir=true"));
        s.put("/v2/keys/dv", "value=one");
        s.send(Request::new("DELETE", "/v2/keys/dv").form("prevValue=two"));
        s.get("/v2/keys/?sorted=true");
    }

    pub fn form_body_wins_over_query_string(s: &mut Session) {
        s.send(Request::new("PUT", "/v2/keys/m?value=query").form("value=body"));
        s.send(Request::new("PUT", "/v2/keys/m2?value=query&ttl=100").form("other=1"));
        s.send(Request::new("PUT", "/v2/keys/m3?value=query").form(""));
        s.send(Request::new("PUT", "/v2/keys/m?prevValue=body").form("value=cas"));
        s.get("/v2/keys/?sorted=true");
    }

    pub fn post_ignores_prev_conditions_and_makes_in_order_dirs(s: &mut Session) {
        s.post("/v2/keys/pq", "value=a&prevExist=bogus");
        s.post("/v2/keys/pq", "value=b&prevValue=nomatch&prevIndex=abc");
        s.post("/v2/keys/pq", "dir=true");
        s.post("/v2/keys/pq", "value=c&ttl=100");
        s.post("/v2/keys/newparent/sub", "value=d");
        s.post("/v2/keys/pq", "value=e&ttl=abc");
        s.post("/v2/keys/pq", "value=f&dir=maybe");
        s.get("/v2/keys/pq?sorted=true&recursive=true");
        s.get("/v2/keys/newparent?recursive=true");
    }

    pub fn unsupported_method_is_405_with_allow(s: &mut Session) {
        s.send(Request::new("PATCH", "/v2/keys/foo").form("value=x"));
        s.send(Request::new("TRACE", "/v2/keys/foo"));
        s.send(Request::new("PATCH", "/v2/keys/"));
        s.get("/v2/keys/foo");
    }

    pub fn unknown_paths_are_plain_404(s: &mut Session) {
        for path in [
            "/v2",
            "/v2/foo",
            "/v2/leader",
            "/nope",
            "/v2/keysx",
            "/v2/stats",
            "/v2/stats/nope",
        ] {
            s.get(path);
        }
        s.send(Request::new("PUT", "/v2/foo").form("value=x"));
    }

    pub fn double_slash_redirects_301_to_the_clean_path(s: &mut Session) {
        s.put("/v2/keys/ts", "value=x");
        s.get("/v2/keys//ts");
        s.get("/v2/keys/a//b");
        s.get("/v2//keys/ts");
        s.send(Request::new("PUT", "/v2/keys//ts").form("value=y"));
        s.get("/v2/keys/ts/");
        s.get("/v2/keys/./ts");
        s.get("/v2/keys/x/../ts");
        s.get("/v2/keys/ts");
    }

    pub fn head_answers_like_get_without_body(s: &mut Session) {
        s.put("/v2/keys/hd", "value=x");
        s.send(Request::new("HEAD", "/v2/keys/hd"));
        s.send(Request::new("HEAD", "/v2/keys/missing"));
        s.send(Request::new("HEAD", "/v2/keys/"));
        s.send(Request::new("HEAD", "/v2/keys/hd?recursive=maybe"));
    }

    pub fn options_answers_cors_preflight(s: &mut Session) {
        s.send(Request::new("OPTIONS", "/v2/keys/foo"));
        s.send(
            Request::new("OPTIONS", "/v2/keys/foo")
                .header("Origin", "http://example.com")
                .header("Access-Control-Request-Method", "PUT"),
        );
        s.send(Request::new("GET", "/v2/keys/foo").header("Origin", "http://example.com"));
    }

    pub fn percent_encoded_keys_and_trailing_slash(s: &mut Session) {
        s.put("/v2/keys/sp%20ace", "value=x");
        s.get("/v2/keys/sp%20ace");
        s.get("/v2/keys/sp ace".replace(' ', "%20").as_str());
        s.put("/v2/keys/caf%C3%A9", "value=%C3%A9t%C3%A9");
        s.get("/v2/keys/caf%C3%A9");
        s.put("/v2/keys/sl%2Fash", "value=x");
        s.get("/v2/keys/sl/ash");
        s.put("/v2/keys/plus+sign", "value=a+b%2Bc");
        s.get("/v2/keys/plus+sign");
        s.put("/v2/keys/trail/", "value=x");
        s.get("/v2/keys/trail");
        s.get("/v2/keys/?recursive=true&sorted=true");
    }

    pub fn json_escapes_html_characters(s: &mut Session) {
        s.put("/v2/keys/html", "value=%3Cb%3E%26%3C%2Fb%3E");
        s.put("/v2/keys/%3Ctag%3E%26", "value=%22quoted%22%5C%09tab");
        s.get("/v2/keys/?sorted=true");
        s.get("/v2/keys/%3Cmissing%3E");
        s.put("/v2/keys/ctrl", "value=%01%7F%E2%80%A8");
        s.get("/v2/keys/ctrl");
    }

    pub fn version_and_health_shapes(s: &mut Session) {
        s.get("/version");
        s.get("/health");
        s.send(Request::new("HEAD", "/health"));
    }

    pub fn members_shape(s: &mut Session) {
        s.get("/v2/members");
        s.get("/v2/members/leader");
        s.get("/v2/machines");
    }

    pub fn members_add_without_urls(s: &mut Session) {
        for body in ["{}", r#"{"peerURLs":[]}"#, r#"{"peerURLs":null}"#] {
            s.send(Request::new("POST", "/v2/members").header("Content-Type", "application/json").raw_body(body.into()));
        }
        s.get("/v2/members");
    }

    pub fn stats_self_shape(s: &mut Session) {
        s.put("/v2/keys/x", "value=y");
        s.shape_only(true);
        s.get("/v2/stats/self");
        s.get("/v2/stats/store");
    }

    pub fn quorum_get_has_the_same_shape(s: &mut Session) {
        s.put("/v2/keys/qk", "value=x");
        s.get("/v2/keys/qk?quorum=true");
        s.get("/v2/keys/?quorum=true&recursive=true");
        s.get("/v2/keys/missing?quorum=true");
    }

    pub fn quorum_get_ignores_wait(s: &mut Session) {
        // etcd turns a quorum GET into a Raft read (QGET) before it looks at `wait`: the
        // answer is the current node, not an event from history, and it never blocks.
        s.put("/v2/keys/qw", "value=first");
        s.put("/v2/keys/qw", "value=second");
        s.get(&format!("/v2/keys/qw?wait=true&waitIndex={}&quorum=true", s.idx(1)));
        s.get("/v2/keys/qw?wait=true&quorum=true");
        s.get("/v2/keys/qw?wait=true&stream=true&quorum=true");
        s.get("/v2/keys/?wait=true&recursive=true&quorum=true&sorted=true");
    }

    pub fn missing_value_is_empty_string_and_dir_ignores_value(s: &mut Session) {
        s.put("/v2/keys/empty", "");
        s.put("/v2/keys/empty2", "value=");
        s.put("/v2/keys/withdir", "dir=true&value=ignored");
        s.put("/v2/keys/empty3", "ttl=100");
        s.get("/v2/keys/?sorted=true");
    }
}
