//! Pure tests of the session: the step files in `steps/`, replayed.
//!
//! Each file is `{ "version": 2|3, "give_up_after_ms": N, "steps": [ {
//! "at_ms": N, "input": …, "effects": [ … ] }, … ] }`; the replay feeds
//! every input to a fresh [`Session`] and compares the effects exactly.
//! `DDM_BLESS_STEPS=1 cargo test -p ddm-actors session` rewrites each
//! file's expected effects with what the session does now (review the diff
//! before committing it).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::*;
use ddm_proto::wire::v3;

/// One step of a file.
#[derive(Debug, Serialize, Deserialize)]
struct Step {
    /// Milliseconds since the session started.
    at_ms: u64,
    /// What the session is told.
    input: Input,
    /// What it must do.
    effects: Vec<Effect>,
}

/// A step file.
#[derive(Debug, Serialize, Deserialize)]
struct StepFile {
    /// What the file shows.
    #[serde(default)]
    about: String,
    /// The version spoken (2 or 3).
    version: u8,
    /// The session's `give_up_after`, in milliseconds.
    give_up_after_ms: u64,
    /// The steps.
    steps: Vec<Step>,
}

fn steps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/exchange/steps")
}

/// Replay `file`; the first mismatch as a message, or the blessed file.
fn replay(path: &Path, bless: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut file: StepFile = serde_json::from_str(&text)
        .map_err(|e| format!("{}: cannot parse: {e}", path.display()))?;
    let version = Version::from_advertised(file.version)
        .ok_or_else(|| format!("{}: bad version", path.display()))?;
    let mut session =
        Session::new(version, Duration::from_millis(file.give_up_after_ms));
    let mut last = 0;
    for (i, step) in file.steps.iter_mut().enumerate() {
        if step.at_ms < last {
            return Err(format!(
                "{}: step {i} goes back in time",
                path.display()
            ));
        }
        last = step.at_ms;
        let now = Duration::from_millis(step.at_ms);
        let got = session.handle(now, step.input.clone());
        if bless {
            step.effects = got;
        } else if got != step.effects {
            let show = |e: &Vec<Effect>| {
                serde_json::to_string_pretty(e).unwrap_or_default()
            };
            return Err(format!(
                "{}: step {i} ({:?})\nexpected: {}\ngot: {}",
                path.display(),
                step.input,
                show(&step.effects),
                show(&got)
            ));
        }
    }
    if bless {
        let text = serde_json::to_string_pretty(&file).unwrap() + "\n";
        std::fs::write(path, text).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn step_files_replay() {
    let bless = std::env::var_os("DDM_BLESS_STEPS").is_some_and(|v| v == "1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(steps_dir())
        .expect("steps directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 9, "step files missing: {files:?}");
    let failures: Vec<String> =
        files.iter().filter_map(|f| replay(f, bless).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn backoff_doubles_and_is_capped() {
    let ms = |n| backoff(n).as_millis();
    assert_eq!([ms(1), ms(2), ms(3), ms(4), ms(5)], [100, 200, 400, 800, 1600]);
    assert_eq!(backoff(7), BACKOFF_MAX);
    assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    // The report comes after the fifth failure, i.e. after the first
    // four back-offs: well within a few seconds.
    let total: Duration = (1..MAX_ATTEMPTS).map(backoff).sum();
    assert_eq!(total, Duration::from_millis(1500));
}

#[test]
fn the_quiet_after_an_answer_grows_with_it_and_is_capped() {
    let ms = |b| answer_quiet(b).as_millis();
    assert_eq!([ms(0), ms(1), ms(1024), ms(3000)], [400, 401, 401, 403]);
    // 250,000 prefixes: about 15 MB of answer.
    assert_eq!(ms(15_000_000), 400 + 14_649);
    assert_eq!(answer_quiet(usize::MAX), QUIET_MAX);
}

/// Every step file's inputs, round-tripped through JSON, are the same
/// inputs: the files mean what the session reads.
#[test]
fn inputs_and_effects_round_trip() {
    let path = steps_dir().join("merge_withdraw_cancels_announce.json");
    let file: StepFile =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for step in file.steps {
        let text = serde_json::to_string(&step).unwrap();
        let back: Step = serde_json::from_str(&text).unwrap();
        assert_eq!(back.input, step.input);
        assert_eq!(back.effects, step.effects);
    }
}

/// A step whose expected effects differ is reported with its file, index,
/// expected and got.
#[test]
fn a_mismatch_names_the_file_and_step() {
    let mut file: StepFile = serde_json::from_str(
        &std::fs::read_to_string(steps_dir().join("bind_retries.json"))
            .unwrap(),
    )
    .unwrap();
    file.steps[1].effects.pop();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("changed.json");
    std::fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();
    let e = replay(&path, false).unwrap_err();
    assert!(e.contains("changed.json: step 1"), "{e}");
    assert!(e.contains("expected:") && e.contains("got:"), "{e}");
}

/// Two sessions wired to each other: each `Pull` effect is answered by
/// the other side's server (whose session hears `PeerPulled` with the
/// puller's id, and whose answer carries its own id), in either order.
/// Starting together costs no pull back, a restart of one side exactly
/// one, and nothing ever ping-pongs.
#[test]
fn pulls_back_never_ping_pong() {
    struct Sides {
        s: [Session; 2],
        ids: [u64; 2],
        next_id: u64,
    }
    impl Sides {
        fn restart(&mut self, side: usize) {
            self.next_id += 1;
            self.ids[side] = self.next_id;
            self.s[side] = Session::new(Version::V3, Duration::ZERO);
        }
        /// Run until quiet; the pulls each side made. `answer_first`:
        /// a pull's answer reaches the puller before the other side's
        /// session hears of the pull.
        fn run(
            &mut self,
            mut queue: Vec<(usize, Input)>,
            answer_first: bool,
        ) -> [u32; 2] {
            let mut pulls = [0; 2];
            while !queue.is_empty() {
                let (side, input) = queue.remove(0);
                for e in self.s[side].handle(Duration::ZERO, input) {
                    let Effect::Pull { gen } = e else { continue };
                    pulls[side] += 1;
                    assert!(pulls[side] < 10, "ping-pong: {pulls:?}");
                    let other = 1 - side;
                    let heard = (
                        other,
                        Input::PeerPulled {
                            session: Some(self.ids[side]),
                            bytes: 2,
                            late: false,
                        },
                    );
                    let answer = empty_answer(Some(self.ids[other]));
                    let done =
                        (side, Input::PullDone { gen, result: Ok(answer) });
                    if answer_first {
                        queue.extend([done, heard]);
                    } else {
                        queue.extend([heard, done]);
                    }
                }
            }
            pulls
        }
    }
    for answer_first in [false, true] {
        let fresh = || Session::new(Version::V3, Duration::ZERO);
        let mut x = Sides { s: [fresh(), fresh()], ids: [1, 2], next_id: 2 };
        let start = vec![(0, Input::Start), (1, Input::Start)];
        assert_eq!(x.run(start, answer_first), [1, 1]);
        // Side 0 restarts, side 1's session goes on: side 1 pulls back.
        x.restart(0);
        assert_eq!(x.run(vec![(0, Input::Start)], answer_first), [1, 1]);
        // A later pull of side 0 (a sync) needs no pull back.
        assert_eq!(x.run(vec![(0, Input::Pull)], answer_first), [1, 0]);
    }
}

/// A path of the model peers below: a destination (0 to 3) and one of
/// two paths to it, each a name of 300 bytes (two or three fit in the
/// original's 1024-byte limit).
type Key = (u8, u8);

fn model_path((d, v): Key) -> OutPath {
    OutPath::from(&v3::PathVector {
        destination: format!("fd00:{d}::/64").parse().unwrap(),
        path: vec![format!("{v}").repeat(300)],
    })
}

fn model_key(p: &OutPath) -> Key {
    let d = p.destination().addr().segments()[1] as u8;
    (d, p.names().next().unwrap().as_bytes()[0] - b'0')
}

/// What a model peer does with a push it takes.
fn model_apply(peer: &mut BTreeSet<Key>, u: &OutUpdate) {
    let u = u.underlay.as_ref().unwrap();
    assert!(u.announce.is_disjoint(&u.withdraw));
    for p in &u.withdraw {
        peer.remove(&model_key(p));
    }
    for p in &u.announce {
        peer.insert(model_key(p));
    }
}

/// A session and a model peer for the proptests below: the session's
/// clock, our view, what the peer holds, every push the router gave (what
/// it said of each path), the part in flight, the timers set (generation
/// and when due), the last delivery reported.
struct Model {
    s: Session,
    now: Duration,
    view: BTreeSet<Key>,
    peer: BTreeSet<Key>,
    pushes: Vec<Vec<(Key, bool)>>,
    in_flight: Option<(u64, Arc<OutUpdate>)>,
    push_timer: Option<(u64, Duration)>,
    quiet_timer: Option<(u64, Duration)>,
    delivered: u64,
}

type Checked = Result<(), proptest::test_runner::TestCaseError>;

/// An answer holding nothing from a peer naming `session`.
fn empty_answer(session: Option<u64>) -> PullAnswer {
    PullAnswer {
        response: Default::default(),
        push_limit: None,
        bytes: 2,
        session,
    }
}

impl Model {
    /// A session whose first pull was answered by a peer naming `session`.
    fn new(session: Option<u64>) -> Model {
        let mut s = Session::new(Version::V3, Duration::from_secs(1));
        s.handle(Duration::ZERO, Input::Start);
        let first = empty_answer(session);
        s.handle(Duration::ZERO, Input::PullDone { gen: 1, result: Ok(first) });
        Model {
            s,
            now: Duration::ZERO,
            view: BTreeSet::new(),
            peer: BTreeSet::new(),
            pushes: Vec::new(),
            in_flight: None,
            push_timer: None,
            quiet_timer: None,
            delivered: 0,
        }
    }

    /// Hand `input` to the session and take its effects: one part in
    /// flight at a time, the timers kept, and each delivery report
    /// checked: the peer holds what the last push through it said of
    /// every path no later push names (what `rib::Told` forgets is really
    /// gone).
    fn step(&mut self, input: Input) -> Checked {
        for e in self.s.handle(self.now, input) {
            match e {
                Effect::Push { gen, update } => {
                    proptest::prop_assert!(self.in_flight.is_none());
                    self.in_flight = Some((gen, update));
                }
                Effect::StartTimer { kind, gen, after_ms } => {
                    let due = self.now + Duration::from_millis(after_ms);
                    match kind {
                        TimerKind::Push => self.push_timer = Some((gen, due)),
                        TimerKind::Quiet => self.quiet_timer = Some((gen, due)),
                        _ => {}
                    }
                }
                Effect::Delivered { through } => {
                    proptest::prop_assert!(through > self.delivered);
                    proptest::prop_assert!(through <= self.pushes.len() as u64);
                    self.delivered = through;
                    let (done, later) = self.pushes.split_at(through as usize);
                    for d in 0u8..4 {
                        for v in 0u8..2 {
                            let k = (d, v);
                            let named_later =
                                later.iter().flatten().any(|(i, _)| *i == k);
                            let last = done
                                .iter()
                                .flatten()
                                .rev()
                                .find(|(i, _)| *i == k);
                            if let (false, Some((_, present))) =
                                (named_later, last)
                            {
                                proptest::prop_assert_eq!(
                                    self.peer.contains(&k),
                                    *present,
                                    "{:?} after delivery through {}",
                                    k,
                                    through
                                );
                            }
                        }
                    }
                }
                Effect::Dropped { .. } => {
                    proptest::prop_assert!(false, "dropped: {:?}", e)
                }
                _ => {}
            }
        }
        // `Session::is_drained` (which the exchange actor trims the heap
        // on): nothing left to send means every push reported delivered,
        // and a part out is something left.
        if self.s.is_drained() {
            proptest::prop_assert_eq!(self.delivered, self.pushes.len() as u64);
        }
        if self.in_flight.is_some() {
            proptest::prop_assert!(!self.s.is_drained());
        }
        Ok(())
    }

    /// A push of the router, as the RIB builds them, changing our view
    /// and recorded: op 0 withdraws `k`; 1 and 2 announce it (1 as new
    /// unless held), and with `replace` withdraw the other path to its
    /// destination in the same push.
    fn router_push(&mut self, op: u8, k: Key, replace: bool) -> Input {
        let mut u = ddm_proto::outgoing::OutUnderlay::default();
        let mut said = Vec::new();
        if op == 0 {
            u.withdraw_path(model_path(k));
            self.view.remove(&k);
            said.push((k, false));
        } else {
            let other = (k.0, 1 - k.1);
            if replace && self.view.remove(&other) {
                u.withdraw_path(model_path(other));
                said.push((other, false));
            }
            let fresh = op == 1 && !self.view.contains(&k);
            u.announce_path(model_path(k), !fresh);
            self.view.insert(k);
            said.push((k, true));
        }
        self.pushes.push(said);
        Input::Push(OutUpdate { underlay: Some(u), tunnel: None })
    }

    /// The part in flight, if any, done: `Taken` applied, `Failed`
    /// applied or not (`flag`: a reset after the peer took it), `Refused`
    /// as 429 (`flag`: the peer's router behind) or, if it has more than
    /// one item, as too large (else it stays in flight).
    fn part_done(&mut self, how: Done, flag: bool) -> Option<Input> {
        let (gen, part) = self.in_flight.take()?;
        let result = match how {
            Done::Taken => {
                model_apply(&mut self.peer, &part);
                Ok(100)
            }
            Done::Failed => {
                if flag {
                    model_apply(&mut self.peer, &part);
                }
                Err(Failure::Other("reset".into()))
            }
            Done::Refused if flag => Err(Failure::Busy("429".into())),
            Done::Refused if part.len() > 1 => {
                Err(Failure::TooLarge("413".into()))
            }
            Done::Refused => {
                self.in_flight = Some((gen, part));
                return None;
            }
        };
        Some(Input::PushDone { gen, result })
    }

    /// The timer due first, taken, with when it is due.
    fn next_timer(&mut self) -> Option<(Input, Duration)> {
        // The quiet's first when both are due together.
        let quiet_first = match (self.push_timer, self.quiet_timer) {
            (Some((_, p)), Some((_, q))) => q <= p,
            (push, _) => push.is_none(),
        };
        let (kind, (gen, due)) = if quiet_first {
            (TimerKind::Quiet, self.quiet_timer.take()?)
        } else {
            (TimerKind::Push, self.push_timer.take()?)
        };
        Some((Input::Timer { kind, gen }, due))
    }

    /// Deliver everything, firing timers when due (`at`: what the peer
    /// does by then, before the timer); the peer must end with our view
    /// and every push reported.
    fn drain(&mut self, mut at: impl FnMut(&mut Model, Duration)) -> Checked {
        for _ in 0..1000 {
            let input = if let Some(i) = self.part_done(Done::Taken, false) {
                i
            } else if let Some((input, due)) = self.next_timer() {
                at(self, due);
                self.now = self.now.max(due);
                input
            } else {
                break;
            };
            self.step(input)?;
        }
        at(self, Duration::MAX);
        proptest::prop_assert_eq!(&self.peer, &self.view);
        proptest::prop_assert_eq!(self.delivered, self.pushes.len() as u64);
        proptest::prop_assert!(self.s.is_drained());
        Ok(())
    }
}

/// How a part in flight ends ([`Model::part_done`]).
#[derive(Debug, Clone, Copy)]
enum Done {
    Taken,
    Failed,
    Refused,
}

impl Done {
    /// Each way, for the proptests to pick from.
    const ALL: [Done; 3] = [Done::Taken, Done::Failed, Done::Refused];
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
    /// A session against a model peer of ours (its answers name its
    /// session), with parts of two or three items (the original's
    /// 1024-byte limit): the router's pushes (as the RIB builds them:
    /// paths to 4 destinations along 2 paths each, a path replaced by the
    /// other in one push), parts delivered, failed (applied by the peer or
    /// not), refused as too large or as 429, retried, and our answers to
    /// its pulls (it takes our whole view at once, and names its session).
    /// Every delivery report is true ([`Model::step`]); once all is sent,
    /// the peer holds exactly our view and every push is reported.
    #[test]
    fn delivered_pushes_are_with_the_peer(
        ops in proptest::collection::vec((0u8..8, 0u8..8, proptest::bool::ANY), 0..60),
    ) {
        let mut m = Model::new(Some(7));
        for (op, item, flag) in ops {
            let k: Key = (item % 4, item / 4);
            let input = match op {
                0..=2 => m.router_push(op, k, flag),
                3 => {
                    m.peer = m.view.clone();
                    m.step(Input::Answered)?;
                    Input::PeerPulled {
                        session: Some(7),
                        bytes: 100,
                        late: false,
                    }
                }
                4..=6 => {
                    let how = Done::ALL[usize::from(op - 4)];
                    let Some(i) = m.part_done(how, flag)
                    else { continue };
                    i
                }
                _ => {
                    let Some((gen, _)) = m.push_timer.take() else { continue };
                    Input::Timer { kind: TimerKind::Push, gen }
                }
            };
            m.step(input)?;
        }
        m.drain(|_, _| {})?;
    }

    /// An original peer (its pulls and answers name no session) adds our
    /// answer to its pull to what it holds once it has read it, at any
    /// time until `answer_quiet` of the answer's size after our server
    /// encoded it (the model's bound on its reading and applying; the
    /// latest moment unless an op adds it sooner), and gives up on an
    /// answer not begun `ORIGINAL_PULL_WAIT` after the router built it.
    /// The session's clock moves as timers fall due. However the router's
    /// pushes, our answers (of varying size), their encoding (late or
    /// not), arrival or abandonment, and the pushes' deliveries, failures
    /// and refusals interleave, every delivery report is true and the peer
    /// ends holding exactly our view: no withdrawal reaches it before an
    /// answer that could undo it.
    #[test]
    fn an_original_adding_late_answers_ends_with_our_view(
        ops in proptest::collection::vec((0u8..10, 0u8..8, proptest::bool::ANY), 0..60),
    ) {
        /// Our answer to the peer's pull: built by the router (`at`), or
        /// encoded by our server and added by the peer at `by` at the
        /// latest.
        enum Answer {
            Built { view: BTreeSet<Key>, at: Duration },
            Sent { view: BTreeSet<Key>, by: Duration },
        }
        /// What the peer has done with the answer by `t`.
        fn settle(answer: &mut Option<Answer>, peer: &mut BTreeSet<Key>, t: Duration) {
            match answer {
                Some(Answer::Sent { view, by }) if *by <= t => {
                    peer.extend(std::mem::take(view));
                    *answer = None;
                }
                Some(Answer::Built { at, .. }) if *at + ORIGINAL_PULL_WAIT <= t => {
                    *answer = None;
                }
                _ => {}
            }
        }
        let mut m = Model::new(None);
        let mut answer: Option<Answer> = None;
        for (op, item, flag) in ops {
            let k: Key = (item % 4, item / 4);
            let input = match op {
                0..=2 => m.router_push(op, k, flag),
                3 => {
                    if answer.is_some() {
                        continue;
                    }
                    answer = Some(Answer::Built { view: m.view.clone(), at: m.now });
                    Input::Answered
                }
                4 => {
                    // Our server has encoded the answer: late if the peer
                    // stopped waiting (`flag`: the pull arrived well
                    // before the router built it).
                    let Some(Answer::Built { view, at }) = answer.take() else {
                        continue;
                    };
                    let late = flag || m.now >= at + ORIGINAL_PULL_WAIT;
                    let bytes = 2000 + usize::from(item) * 60_000;
                    if !late {
                        let by = m.now + answer_quiet(bytes);
                        answer = Some(Answer::Sent { view, by });
                    }
                    Input::PeerPulled { session: None, bytes, late }
                }
                5 => {
                    // The peer adds the answer now, or (`flag`) gives up.
                    if let Some(Answer::Sent { view, .. }) = answer.take() {
                        if !flag {
                            m.peer.extend(view);
                        }
                    } else if let Some(Answer::Built { .. }) = &answer {
                        if flag {
                            answer = None;
                        }
                    }
                    continue;
                }
                6..=8 => {
                    let how = Done::ALL[usize::from(op - 6)];
                    let Some(i) = m.part_done(how, flag)
                    else { continue };
                    i
                }
                _ => {
                    // The first timer falls due; what the peer does by
                    // then comes first.
                    let Some((input, due)) = m.next_timer() else { continue };
                    settle(&mut answer, &mut m.peer, due);
                    m.now = m.now.max(due);
                    input
                }
            };
            m.step(input)?;
        }
        m.drain(|m, t| settle(&mut answer, &mut m.peer, t))?;
    }
}
