//! What a task's generator makes: one input as the template's variables, and the expected answer.

/// One generated input: the template's variables and the expected answer.
#[derive(Debug)]
pub(crate) struct Sample {
    pub vars: Vec<(&'static str, String)>,
    pub completion: String,
}
