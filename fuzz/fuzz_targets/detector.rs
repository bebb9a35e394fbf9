//! The protocol detector on arbitrary first bytes, split at an arbitrary point: never panics and decides the same.
#![no_main]

use ivy_protocol::detect::{Detection, Detector};
use libfuzzer_sys::fuzz_target;

fn decide(chunks: &[&[u8]]) -> Vec<String> {
    let mut d = Detector::with_builtin_rules();
    let mut answers = Vec::new();
    for c in chunks {
        d.push(c);
        loop {
            match d.poll() {
                Detection::NeedMore => break,
                Detection::Registration(r) => answers.push(r.raw_id),
                other => {
                    answers.push(format!("{other:?}"));
                    return answers;
                }
            }
        }
    }
    answers
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let at = usize::from(cut) % (rest.len() + 1);
    assert_eq!(decide(&[rest]), decide(&[&rest[..at], &rest[at..]]));
});
