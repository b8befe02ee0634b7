//! A linearizability checker for histories of etcd-v2 single-key registers (Wing & Gong's
//! search with Lowe's memoization, as in porcupine), plus the lost-write count.
//!
//! What it owns: the sequential model of one v2 key (set / quorum get / compare-and-swap on
//! `prevValue` / create with `prevExist=false` / delete) and the search for a total order of a
//! recorded history that respects real time and the model.
//!
//! Invariants and rules:
//! * Keys are checked independently (P-compositionality: a history is linearizable iff every
//!   key's sub-history is, because the workload has no multi-key operation).
//! * An operation whose outcome is unknown (timeout, reset after the request was sent, 5xx)
//!   is **open**: it has no return event, may take effect at any moment after its invocation
//!   or never, and nothing it "returned" constrains the search. An open read tells nothing
//!   and is dropped.
//! * `a` precedes `b` only when `a` returned strictly before `b` was invoked; equal instants
//!   count as concurrent (the permissive choice: a tie never creates a violation).
//! * The search is bounded by a step budget. Exhausting it yields [`Verdict::Inconclusive`],
//!   which callers must treat as a failure to prove, never as a pass.
//! * Memoization key: (set of linearized operations, model state). Values are interned per
//!   key into `u32`s (0 = key absent), so a state is one integer.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// What a client asked for on one key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Input {
    /// `PUT value=v`.
    Set(String),
    /// `GET ?quorum=true`.
    Get,
    /// `PUT value=new&prevValue=expected`.
    Cas { expected: String, new: String },
    /// `PUT value=v&prevExist=false`.
    Create(String),
    /// `DELETE`.
    Delete,
}

impl Input {
    /// The value this operation would write, if it writes one.
    pub fn written_value(&self) -> Option<&str> {
        match self {
            Input::Set(v) | Input::Create(v) | Input::Cas { new: v, .. } => Some(v),
            Input::Get | Input::Delete => None,
        }
    }

    pub fn is_read(&self) -> bool {
        matches!(self, Input::Get)
    }
}

/// What the server answered (or that nobody knows).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// A write succeeded (set / CAS / create / delete).
    Ok,
    /// A read found this value.
    Value(String),
    /// etcd error 100: the key does not exist (read, CAS, delete).
    NotFound,
    /// etcd error 101: CAS compare failed.
    CompareFailed,
    /// etcd error 105: create on an existing key.
    AlreadyExists,
    /// No answer we can trust: the operation is open forever.
    Unknown,
}

/// One operation of a history. Instants are nanoseconds on one monotonic clock.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Operation {
    pub client: usize,
    pub key: String,
    pub input: Input,
    pub invoke_ns: u64,
    /// `None` when the outcome is unknown (the operation stays open).
    pub return_ns: Option<u64>,
    pub outcome: Outcome,
    /// Which endpoint served it (for reports only).
    pub node: usize,
}

impl Operation {
    pub fn is_open(&self) -> bool {
        self.return_ns.is_none() || self.outcome == Outcome::Unknown
    }

    /// An acknowledged (definitely applied) write.
    pub fn is_acked_write(&self) -> bool {
        !self.input.is_read() && self.outcome == Outcome::Ok && !self.is_open()
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ret = match self.return_ns {
            Some(ns) if !self.is_open() => format!("{:.3}ms", ns as f64 / 1e6),
            _ => "open".to_string(),
        };
        write!(
            f,
            "client {} node {} [{:.3}ms .. {ret}] {:?} -> {:?}",
            self.client,
            self.node,
            self.invoke_ns as f64 / 1e6,
            self.input,
            self.outcome
        )
    }
}

/// Bound on the search, per key.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Search steps (attempted linearizations plus backtracks) allowed per key.
    pub steps_per_key_max: u64,
}

impl Default for Budget {
    fn default() -> Budget {
        // A healthy history needs about one step per operation; a key with a few dozen open
        // writes needs more. 20 M steps is a few seconds of CPU in a debug build.
        Budget { steps_per_key_max: 20_000_000 }
    }
}

/// The result for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists; the text explains the deepest partial order found and where it stuck.
    Violation(String),
    /// The budget ran out before an answer: not a pass.
    Inconclusive { steps: u64 },
}

#[derive(Clone, Debug)]
pub struct KeyReport {
    pub key: String,
    /// Operations considered (open reads excluded).
    pub ops: usize,
    pub open_ops: usize,
    pub steps: u64,
    pub verdict: Verdict,
}

/// The result for a whole history.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub keys: Vec<KeyReport>,
}

impl Report {
    pub fn violations(&self) -> Vec<&KeyReport> {
        self.keys.iter().filter(|k| matches!(k.verdict, Verdict::Violation(_))).collect()
    }

    pub fn inconclusive(&self) -> Vec<&KeyReport> {
        self.keys.iter().filter(|k| matches!(k.verdict, Verdict::Inconclusive { .. })).collect()
    }

    /// True only when every key was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys.iter().all(|k| k.verdict == Verdict::Linearizable)
    }

    pub fn ops(&self) -> usize {
        self.keys.iter().map(|k| k.ops).sum()
    }

    pub fn open_ops(&self) -> usize {
        self.keys.iter().map(|k| k.open_ops).sum()
    }

    pub fn steps(&self) -> u64 {
        self.keys.iter().map(|k| k.steps).sum()
    }

    /// A human summary; the violations' explanations are included.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} keys, {} ops ({} open), {} search steps: {} violations, {} inconclusive",
            self.keys.len(),
            self.ops(),
            self.open_ops(),
            self.steps(),
            self.violations().len(),
            self.inconclusive().len()
        );
        for key in &self.keys {
            match &key.verdict {
                Verdict::Linearizable => {}
                Verdict::Violation(why) => out.push_str(&format!("\nkey {}: NOT linearizable:\n{why}", key.key)),
                Verdict::Inconclusive { steps } => {
                    out.push_str(&format!("\nkey {}: inconclusive after {steps} steps", key.key))
                }
            }
        }
        out
    }
}

/// Checks every key of `history` independently.
pub fn check(history: &[Operation], budget: Budget) -> Report {
    let mut by_key: HashMap<&str, Vec<&Operation>> = HashMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut keys: Vec<&str> = by_key.keys().copied().collect();
    keys.sort_unstable();
    let keys = keys
        .into_iter()
        .map(|key| check_key(key, &by_key[key], budget))
        .collect();
    Report { keys }
}

// ---- the model -------------------------------------------------------------------------

/// Interned state: 0 = absent, otherwise a value id.
type State = u32;
const ABSENT: State = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModelInput {
    Set(State),
    Get,
    Cas { expected: State, new: State },
    Create(State),
    Delete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModelOutcome {
    Ok,
    Value(State),
    NotFound,
    CompareFailed,
    AlreadyExists,
}

/// etcd v2's semantics for one key (see etcd-v2-api.md §2.4 and the error table).
fn step(state: State, input: ModelInput) -> (State, ModelOutcome) {
    match input {
        ModelInput::Set(v) => (v, ModelOutcome::Ok),
        ModelInput::Get if state == ABSENT => (state, ModelOutcome::NotFound),
        ModelInput::Get => (state, ModelOutcome::Value(state)),
        ModelInput::Cas { .. } if state == ABSENT => (state, ModelOutcome::NotFound),
        ModelInput::Cas { expected, .. } if expected != state => (state, ModelOutcome::CompareFailed),
        ModelInput::Cas { new, .. } => (new, ModelOutcome::Ok),
        ModelInput::Create(_) if state != ABSENT => (state, ModelOutcome::AlreadyExists),
        ModelInput::Create(v) => (v, ModelOutcome::Ok),
        ModelInput::Delete if state == ABSENT => (state, ModelOutcome::NotFound),
        ModelInput::Delete => (ABSENT, ModelOutcome::Ok),
    }
}

struct Interner {
    ids: HashMap<String, State>,
    names: Vec<String>,
}

impl Interner {
    fn new() -> Interner {
        Interner { ids: HashMap::new(), names: vec!["<absent>".to_string()] }
    }

    fn id(&mut self, value: &str) -> State {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = self.names.len() as State;
        self.names.push(value.to_string());
        self.ids.insert(value.to_string(), id);
        id
    }

    fn name(&self, state: State) -> &str {
        &self.names[state as usize]
    }
}

// ---- the search ------------------------------------------------------------------------

struct Op<'a> {
    source: &'a Operation,
    input: ModelInput,
    /// `None` for open operations: any outcome, any time after the call, or never.
    outcome: Option<ModelOutcome>,
    call_entry: usize,
    return_entry: Option<usize>,
}

#[derive(Clone, Copy)]
enum EntryKind {
    Call,
    Return,
}

/// A doubly linked list over entries `1..=n`; index 0 is the head sentinel, `NIL` ends it.
const NIL: usize = usize::MAX;

struct Bitset(Vec<u64>);

impl Bitset {
    fn new(bits: usize) -> Bitset {
        Bitset(vec![0; bits.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

fn check_key(key: &str, ops: &[&Operation], budget: Budget) -> KeyReport {
    let mut interner = Interner::new();
    // Open reads constrain nothing: drop them.
    let kept: Vec<&Operation> = ops.iter().copied().filter(|op| !(op.is_open() && op.input.is_read())).collect();

    let mut model_ops: Vec<Op> = Vec::with_capacity(kept.len());
    for source in &kept {
        let input = match &source.input {
            Input::Set(v) => ModelInput::Set(interner.id(v)),
            Input::Get => ModelInput::Get,
            Input::Cas { expected, new } => ModelInput::Cas { expected: interner.id(expected), new: interner.id(new) },
            Input::Create(v) => ModelInput::Create(interner.id(v)),
            Input::Delete => ModelInput::Delete,
        };
        let outcome = if source.is_open() {
            None
        } else {
            Some(match &source.outcome {
                Outcome::Ok => ModelOutcome::Ok,
                // A value nobody wrote gets a fresh id no write produces: it never matches.
                Outcome::Value(v) => ModelOutcome::Value(interner.id(v)),
                Outcome::NotFound => ModelOutcome::NotFound,
                Outcome::CompareFailed => ModelOutcome::CompareFailed,
                Outcome::AlreadyExists => ModelOutcome::AlreadyExists,
                Outcome::Unknown => unreachable!("unknown outcomes are open"),
            })
        };
        model_ops.push(Op { source, input, outcome, call_entry: 0, return_entry: None });
    }

    // Events sorted by time; at equal instants calls come first (ties are concurrent).
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(model_ops.len() * 2);
    for (i, op) in model_ops.iter().enumerate() {
        events.push((op.source.invoke_ns, 0, i));
        if op.outcome.is_some() {
            let ret = op.source.return_ns.unwrap_or(u64::MAX).max(op.source.invoke_ns);
            events.push((ret, 1, i));
        }
    }
    events.sort_unstable();
    let entries = events.len();
    let mut kinds = Vec::with_capacity(entries + 1);
    let mut entry_op = Vec::with_capacity(entries + 1);
    kinds.push(EntryKind::Call); // the head sentinel; never visited
    entry_op.push(usize::MAX);
    for (n, &(_, kind, op)) in events.iter().enumerate() {
        let entry = n + 1;
        if kind == 0 {
            kinds.push(EntryKind::Call);
            model_ops[op].call_entry = entry;
        } else {
            kinds.push(EntryKind::Return);
            model_ops[op].return_entry = Some(entry);
        }
        entry_op.push(op);
    }
    let mut next: Vec<usize> = (0..=entries).map(|e| if e < entries { e + 1 } else { NIL }).collect();
    let mut prev: Vec<usize> = (0..=entries).map(|e| e.wrapping_sub(1)).collect();

    let closed_total = model_ops.iter().filter(|op| op.outcome.is_some()).count();
    let open_ops = model_ops.len() - closed_total;
    let mut closed_remaining = closed_total;

    // Removing an operation removes its call and return entries.
    fn unlink(next: &mut [usize], prev: &mut [usize], entry: usize) {
        let (p, n) = (prev[entry], next[entry]);
        next[p] = n;
        if n != NIL {
            prev[n] = p;
        }
    }
    fn relink(next: &mut [usize], prev: &mut [usize], entry: usize) {
        let (p, n) = (prev[entry], next[entry]);
        next[p] = entry;
        if n != NIL {
            prev[n] = entry;
        }
    }

    let mut linearized = Bitset::new(model_ops.len());
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    // (operation, state before it)
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = ABSENT;
    let mut steps: u64 = 0;
    // The deepest partial linearization seen, and the return entry it stuck on.
    let mut deepest: (Vec<(usize, State)>, State, usize) = (Vec::new(), ABSENT, NIL);

    let mut entry = next[0];
    let verdict = loop {
        if closed_remaining == 0 {
            break Verdict::Linearizable;
        }
        steps += 1;
        if steps > budget.steps_per_key_max {
            break Verdict::Inconclusive { steps: steps - 1 };
        }
        let is_call = entry != NIL && matches!(kinds[entry], EntryKind::Call);
        if is_call {
            let op_index = entry_op[entry];
            let op = &model_ops[op_index];
            let (new_state, outcome) = step(state, op.input);
            let matches = op.outcome.is_none_or(|expected| expected == outcome);
            if matches {
                linearized.set(op_index);
                if cache.insert((linearized.0.clone(), new_state)) {
                    stack.push((op_index, state));
                    state = new_state;
                    unlink(&mut next, &mut prev, op.call_entry);
                    if let Some(ret) = op.return_entry {
                        unlink(&mut next, &mut prev, ret);
                        closed_remaining -= 1;
                    }
                    entry = next[0];
                    continue;
                }
                linearized.clear(op_index);
            }
            entry = next[entry];
        } else {
            // A return whose call is not linearized yet (or the end): undo the last choice.
            if stack.len() >= deepest.0.len() && entry != NIL {
                deepest = (stack.clone(), state, entry);
            }
            let Some((op_index, old_state)) = stack.pop() else {
                break Verdict::Violation(explain(&model_ops, &interner, &deepest));
            };
            let op = &model_ops[op_index];
            state = old_state;
            linearized.clear(op_index);
            if let Some(ret) = op.return_entry {
                relink(&mut next, &mut prev, ret);
                closed_remaining += 1;
            }
            relink(&mut next, &mut prev, op.call_entry);
            entry = next[op.call_entry];
        }
    };
    KeyReport { key: key.to_string(), ops: model_ops.len(), open_ops, steps, verdict }
}

/// Explains a violation: the tail of the deepest partial order and the operation that no
/// order could fit before its return.
fn explain(ops: &[Op], interner: &Interner, deepest: &(Vec<(usize, State)>, State, usize)) -> String {
    const TAIL_OPS: usize = 8;
    let (order, state, stuck_entry) = deepest;
    let mut out = format!("deepest partial linearization: {} ops; its last ones:\n", order.len());
    let from = order.len().saturating_sub(TAIL_OPS);
    for &(op_index, before) in &order[from..] {
        out.push_str(&format!("  (state {:?}) {}\n", interner.name(before), ops[op_index].source));
    }
    out.push_str(&format!("  state after it: {:?}\n", interner.name(*state)));
    if let Some(stuck) = ops.iter().find(|op| op.return_entry == Some(*stuck_entry)) {
        out.push_str(&format!("cannot linearize before its return: {}", stuck.source));
    }
    out
}

// ---- lost acknowledged writes -----------------------------------------------------------

/// Acknowledged writes that a key's final value proves lost: writes (set / CAS / create /
/// delete answered OK) invoked strictly after the operation that wrote the final value had
/// returned. `final_value` is what a quorum read returned once all clients stopped and the
/// cluster was healthy (`None` = key absent). The most favourable explanation is used: an
/// absent key is explained by the latest delete (an open one returns "never"); a key nobody
/// wrote is explained by the initial absent state. A final value nobody wrote is reported as
/// every acknowledged write lost (the linearizability check names it precisely).
pub fn lost_acked_writes<'a>(ops: &[&'a Operation], final_value: Option<&str>) -> Vec<&'a Operation> {
    // `None`: explained only by the initial state, so every acknowledged write is lost.
    let explained_until_ns: Option<u64> = match final_value {
        Some(value) => match ops.iter().find(|op| op.input.written_value() == Some(value)) {
            // An open writer may have returned at any time: nothing is provably lost.
            Some(op) if op.is_open() => return Vec::new(),
            Some(op) => op.return_ns,
            None => None,
        },
        None => {
            let mut latest: Option<u64> = None;
            for op in ops.iter().filter(|op| op.input == Input::Delete && (op.outcome == Outcome::Ok || op.is_open())) {
                if op.is_open() {
                    return Vec::new();
                }
                latest = latest.max(op.return_ns);
            }
            latest
        }
    };
    ops.iter()
        .copied()
        .filter(|op| op.is_acked_write() && explained_until_ns.is_none_or(|until| op.invoke_ns > until))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A tiny history builder: times are in milliseconds, converted to nanoseconds.
    struct H(Vec<Operation>);

    impl H {
        fn new() -> H {
            H(Vec::new())
        }
        fn op(mut self, client: usize, key: &str, input: Input, call_ms: u64, ret_ms: Option<u64>, outcome: Outcome) -> H {
            self.0.push(Operation {
                client,
                key: key.to_string(),
                input,
                invoke_ns: call_ms * 1_000_000,
                return_ns: ret_ms.map(|ms| ms * 1_000_000),
                outcome,
                node: 0,
            });
            self
        }
        fn set(self, c: usize, v: &str, call: u64, ret: u64) -> H {
            self.op(c, "k", Input::Set(v.into()), call, Some(ret), Outcome::Ok)
        }
        fn get(self, c: usize, v: Option<&str>, call: u64, ret: u64) -> H {
            let outcome = v.map_or(Outcome::NotFound, |v| Outcome::Value(v.into()));
            self.op(c, "k", Input::Get, call, Some(ret), outcome)
        }
        fn cas(self, c: usize, expected: &str, new: &str, call: u64, ret: u64, outcome: Outcome) -> H {
            self.op(c, "k", Input::Cas { expected: expected.into(), new: new.into() }, call, Some(ret), outcome)
        }
        fn open_set(self, c: usize, v: &str, call: u64) -> H {
            self.op(c, "k", Input::Set(v.into()), call, None, Outcome::Unknown)
        }
        fn verdict(&self) -> Verdict {
            let report = check(&self.0, Budget::default());
            assert_eq!(report.keys.len(), 1);
            report.keys[0].verdict.clone()
        }
        fn is_violation(&self) -> bool {
            matches!(self.verdict(), Verdict::Violation(_))
        }
    }

    #[test]
    fn sequential_history_following_the_model_is_linearizable() {
        let h = H::new()
            .get(0, None, 0, 1)
            .set(0, "a", 2, 3)
            .get(1, Some("a"), 4, 5)
            .cas(1, "a", "b", 6, 7, Outcome::Ok)
            .cas(0, "a", "c", 8, 9, Outcome::CompareFailed)
            .op(0, "k", Input::Create("d".into()), 10, Some(11), Outcome::AlreadyExists)
            .op(1, "k", Input::Delete, 12, Some(13), Outcome::Ok)
            .op(0, "k", Input::Delete, 14, Some(15), Outcome::NotFound)
            .cas(0, "b", "e", 16, 17, Outcome::NotFound)
            .op(1, "k", Input::Create("f".into()), 18, Some(19), Outcome::Ok)
            .get(0, Some("f"), 20, 21);
        assert_eq!(h.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_reads_may_see_either_side_of_an_overlapping_write() {
        let h = H::new()
            .set(0, "a", 0, 1)
            .set(1, "b", 2, 10)
            .get(2, Some("b"), 3, 4)
            .get(3, Some("b"), 5, 6)
            // Real time lets this read be ordered anywhere inside the write's window, but
            // after the read at 3..4 saw "b", "a" would be a step back: that part is checked
            // by the stale-read test. Here both reads agree, so it's linearizable.
            .get(0, Some("b"), 11, 12);
        assert_eq!(h.verdict(), Verdict::Linearizable);
        let either = H::new().set(0, "a", 0, 1).set(1, "b", 2, 10).get(2, Some("a"), 3, 4);
        assert_eq!(either.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_a_violation() {
        let h = H::new().set(0, "a", 0, 1).set(0, "b", 2, 3).get(1, Some("a"), 4, 5);
        assert!(h.is_violation(), "{:?}", h.verdict());
    }

    #[test]
    fn read_going_back_in_time_during_a_write_is_a_violation() {
        // Both reads overlap the write, but once one read saw "b" a later read can't see "a".
        let h = H::new().set(0, "a", 0, 1).set(1, "b", 2, 20).get(2, Some("b"), 3, 4).get(3, Some("a"), 5, 6);
        assert!(h.is_violation(), "{:?}", h.verdict());
    }

    #[test]
    fn lost_write_read_as_absent_is_a_violation() {
        let h = H::new().set(0, "a", 0, 1).get(1, None, 2, 3);
        assert!(h.is_violation());
    }

    #[test]
    fn read_of_a_value_never_written_is_a_violation() {
        let h = H::new().set(0, "a", 0, 1).get(1, Some("zzz"), 2, 3);
        assert!(h.is_violation());
        // Even concurrently with every write.
        let h = H::new().set(0, "a", 0, 10).get(1, Some("zzz"), 1, 9);
        assert!(h.is_violation());
    }

    #[test]
    fn cas_success_contradicting_real_time_order_is_a_violation() {
        // "a" was replaced by "b" before the CAS began, yet the CAS on "a" succeeded.
        let h = H::new().set(0, "a", 0, 1).set(0, "b", 2, 3).cas(1, "a", "c", 4, 5, Outcome::Ok);
        assert!(h.is_violation());
        // Two CASes from the same expected value cannot both succeed.
        let h = H::new()
            .set(0, "a", 0, 1)
            .cas(1, "a", "b", 2, 5, Outcome::Ok)
            .cas(2, "a", "c", 2, 5, Outcome::Ok);
        assert!(h.is_violation());
        // A CAS that failed although the expected value was surely there.
        let h = H::new().set(0, "a", 0, 1).cas(1, "a", "b", 2, 3, Outcome::CompareFailed);
        assert!(h.is_violation());
    }

    #[test]
    fn open_write_may_or_may_not_take_effect() {
        let seen = H::new().set(0, "a", 0, 1).open_set(1, "b", 2).get(2, Some("b"), 100, 101);
        assert_eq!(seen.verdict(), Verdict::Linearizable);
        let not_seen = H::new().set(0, "a", 0, 1).open_set(1, "b", 2).get(2, Some("a"), 100, 101);
        assert_eq!(not_seen.verdict(), Verdict::Linearizable);
        // It may even show up much later, after other reads missed it...
        let late = H::new()
            .set(0, "a", 0, 1)
            .open_set(1, "b", 2)
            .get(2, Some("a"), 100, 101)
            .get(2, Some("b"), 200, 201);
        assert_eq!(late.verdict(), Verdict::Linearizable);
        // ...but once seen, it can't be unseen.
        let flicker = H::new()
            .set(0, "a", 0, 1)
            .open_set(1, "b", 2)
            .get(2, Some("b"), 100, 101)
            .get(2, Some("a"), 200, 201);
        assert!(flicker.is_violation());
        // And it cannot take effect before it was invoked.
        let early = H::new().set(0, "a", 0, 1).get(2, Some("b"), 2, 3).open_set(1, "b", 4);
        assert!(early.is_violation());
    }

    #[test]
    fn open_reads_are_ignored_and_ties_count_as_concurrent() {
        let h = H::new().set(0, "a", 0, 1).op(1, "k", Input::Get, 2, None, Outcome::Unknown);
        let report = check(&h.0, Budget::default());
        assert_eq!(report.keys[0].ops, 1);
        assert!(report.is_linearizable());
        // The read is invoked exactly when the write returns: it may be ordered before it.
        let tie = H::new().set(0, "a", 0, 5).get(1, None, 5, 6);
        assert_eq!(tie.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = H::new().set(0, "a", 0, 1);
        h = h.op(1, "other", Input::Get, 2, Some(3), Outcome::NotFound);
        let report = check(&h.0, Budget::default());
        assert_eq!(report.keys.len(), 2);
        assert!(report.is_linearizable());
    }

    #[test]
    fn budget_exhaustion_is_inconclusive_not_a_pass() {
        let mut h = H::new();
        for i in 0..40 {
            h = h.open_set(i, &format!("v{i}"), 0);
        }
        h = h.get(99, Some("nobody-wrote-this"), 1, 2);
        let report = check(&h.0, Budget { steps_per_key_max: 1000 });
        assert!(matches!(report.keys[0].verdict, Verdict::Inconclusive { .. }), "{:?}", report.keys[0].verdict);
        assert!(!report.is_linearizable());
        assert_eq!(report.inconclusive().len(), 1);
    }

    /// A simulated register with `clients` concurrent clients, random overlaps, a few open
    /// writes, checked for speed on 10k operations.
    fn simulated_history(ops_total: usize, keys: usize, seed: u64, stale_read_at: Option<usize>) -> Vec<Operation> {
        let mut rng = crate::crash::Rng::new(seed);
        let mut values: Vec<Option<String>> = vec![None; keys];
        let mut prior: Vec<Option<String>> = vec![None; keys];
        let mut out = Vec::with_capacity(ops_total);
        // Operations are applied atomically at `t`; each gets a window around it that
        // overlaps its neighbours, as concurrent clients would see.
        for n in 0..ops_total {
            let t = (n as u64) * 1000 + 1000;
            let call = t - rng.range(1, 900);
            let ret = t + rng.range(1, 900);
            let key = rng.range(0, keys as u64 - 1) as usize;
            let client = rng.range(0, 7) as usize;
            let name = format!("k{key}");
            let roll = rng.range(0, 99);
            let (input, outcome, open) = if roll < 40 {
                let v = format!("v{n}");
                prior[key] = values[key].replace(v.clone());
                (Input::Set(v), Outcome::Ok, rng.range(0, 199) == 0)
            } else if roll < 55 {
                let expected = values[key].clone().unwrap_or_else(|| "none".into());
                let new = format!("v{n}");
                let outcome = match &values[key] {
                    None => Outcome::NotFound,
                    Some(_) => {
                        prior[key] = values[key].replace(new.clone());
                        Outcome::Ok
                    }
                };
                (Input::Cas { expected, new }, outcome, false)
            } else {
                let mut seen = values[key].clone();
                if stale_read_at.is_some_and(|at| n >= at) && prior[key].is_some() && seen != prior[key] {
                    seen = prior[key].clone();
                }
                (Input::Get, seen.map_or(Outcome::NotFound, Outcome::Value), false)
            };
            let (return_ns, outcome) = if open { (None, Outcome::Unknown) } else { (Some(ret * 1000), outcome) };
            out.push(Operation { client, key: name, input, invoke_ns: call * 1000, return_ns, outcome, node: 0 });
        }
        out
    }

    #[test]
    fn ten_thousand_operations_check_quickly() {
        let history = simulated_history(10_000, 16, 7, None);
        let started = Instant::now();
        let report = check(&history, Budget::default());
        let elapsed = started.elapsed();
        assert!(report.is_linearizable(), "{}", report.summary());
        assert_eq!(report.ops(), history.iter().filter(|op| !(op.is_open() && op.input.is_read())).count());
        assert!(elapsed.as_secs_f64() < 5.0, "10k ops took {elapsed:?}");
        // All of them on one key, too.
        let one_key = simulated_history(10_000, 1, 9, None);
        let started = Instant::now();
        let report = check(&one_key, Budget::default());
        assert!(report.is_linearizable(), "{}", report.summary());
        assert!(started.elapsed().as_secs_f64() < 5.0, "10k ops on one key took {:?}", started.elapsed());
    }

    #[test]
    fn a_single_stale_read_in_ten_thousand_operations_is_found() {
        let history = simulated_history(10_000, 16, 11, Some(9_990));
        let report = check(&history, Budget::default());
        assert!(!report.violations().is_empty(), "{}", report.summary());
    }

    /// Brute force: is there an order of a subset (all closed ops, any open ones) that
    /// respects real time and the model? Exponential; for tiny histories only.
    fn brute_force_linearizable(ops: &[Operation]) -> bool {
        fn search(ops: &[Operation], placed: &mut Vec<bool>, state: Option<String>) -> bool {
            if ops.iter().zip(placed.iter()).all(|(op, &p)| p || op.is_open()) {
                return true;
            }
            for i in 0..ops.len() {
                if placed[i] {
                    continue;
                }
                // Every unplaced closed op that returned before `i` was invoked must go first.
                let blocked = ops.iter().enumerate().any(|(j, other)| {
                    j != i && !placed[j] && !other.is_open() && other.return_ns.is_some_and(|r| r < ops[i].invoke_ns)
                });
                if blocked {
                    continue;
                }
                let (next, outcome) = match &ops[i].input {
                    Input::Set(v) => (Some(v.clone()), Outcome::Ok),
                    Input::Get => (state.clone(), state.clone().map_or(Outcome::NotFound, Outcome::Value)),
                    Input::Cas { expected, new } => match &state {
                        None => (None, Outcome::NotFound),
                        Some(cur) if cur != expected => (state.clone(), Outcome::CompareFailed),
                        Some(_) => (Some(new.clone()), Outcome::Ok),
                    },
                    Input::Create(v) => match &state {
                        Some(_) => (state.clone(), Outcome::AlreadyExists),
                        None => (Some(v.clone()), Outcome::Ok),
                    },
                    Input::Delete => match &state {
                        None => (None, Outcome::NotFound),
                        Some(_) => (None, Outcome::Ok),
                    },
                };
                if !ops[i].is_open() && outcome != ops[i].outcome {
                    continue;
                }
                placed[i] = true;
                if search(ops, placed, next) {
                    return true;
                }
                placed[i] = false;
            }
            false
        }
        let ops: Vec<Operation> = ops.iter().filter(|op| !(op.is_open() && op.input.is_read())).cloned().collect();
        search(&ops, &mut vec![false; ops.len()], None)
    }

    #[test]
    fn checker_agrees_with_brute_force_on_small_random_histories() {
        let mut rng = crate::crash::Rng::new(0x5eed);
        let values = ["a", "b", "c"];
        let (mut linearizable, mut not) = (0, 0);
        for round in 0..3000 {
            let mut ops = Vec::new();
            for client in 0..rng.range(2, 6) as usize {
                let call = rng.range(0, 20);
                let ret = call + rng.range(0, 10);
                let v = values[rng.range(0, 2) as usize].to_string();
                let w = values[rng.range(0, 2) as usize].to_string();
                let input = match rng.range(0, 4) {
                    0 => Input::Set(v),
                    1 => Input::Get,
                    2 => Input::Cas { expected: v, new: w },
                    3 => Input::Create(v),
                    _ => Input::Delete,
                };
                let outcome = match (&input, rng.range(0, 3)) {
                    (_, 0) => Outcome::Unknown,
                    (Input::Get, 1) => Outcome::NotFound,
                    (Input::Get, _) => Outcome::Value(values[rng.range(0, 2) as usize].to_string()),
                    (Input::Set(_), _) => Outcome::Ok,
                    (Input::Cas { .. }, 1) => Outcome::CompareFailed,
                    (Input::Create(_), 1) => Outcome::AlreadyExists,
                    (Input::Delete, 1) => Outcome::NotFound,
                    _ => Outcome::Ok,
                };
                let return_ns = (outcome != Outcome::Unknown).then_some(ret);
                ops.push(Operation { client, key: "k".into(), input, invoke_ns: call, return_ns, outcome, node: 0 });
            }
            let expected = brute_force_linearizable(&ops);
            let report = check(&ops, Budget::default());
            assert_eq!(report.is_linearizable(), expected, "round {round}: {ops:#?}\n{}", report.summary());
            assert!(report.inconclusive().is_empty());
            if expected {
                linearizable += 1;
            } else {
                not += 1;
            }
        }
        // The generator must exercise both answers, or the comparison proves little.
        assert!(linearizable > 300 && not > 300, "{linearizable} linearizable, {not} not");
    }

    #[test]
    fn lost_writes_are_counted_from_the_final_value() {
        let h = H::new().set(0, "a", 0, 1).set(0, "b", 2, 3).set(1, "c", 4, 5).open_set(2, "d", 6);
        let ops: Vec<&Operation> = h.0.iter().collect();
        // Final "c": nothing lost ("d" was open).
        assert!(lost_acked_writes(&ops, Some("c")).is_empty());
        // Final "a": "b" and "c" were acknowledged after "a" returned: both lost.
        assert_eq!(lost_acked_writes(&ops, Some("a")).len(), 2);
        // Final "d" (open): could have landed last.
        assert!(lost_acked_writes(&ops, Some("d")).is_empty());
        // Final absent and no delete: all three lost.
        assert_eq!(lost_acked_writes(&ops, None).len(), 3);
    }
}
