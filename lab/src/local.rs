//! The engine as the lab's commands run it: in this process, with adapter folders named on the command line, every
//! request submitted at once so that the continuous batcher runs them together as the server would, and each
//! request's tokens, text and finish reason collected.

use anyhow::bail;
use engine::{AdapterId, Catalog, EngineConfig, EngineHandle, Error, Event, FinishReason, GenerateRequest};
use std::path::PathBuf;

/// An engine on `config`'s model that knows `adapters` by the ids returned (one per folder, in order).
pub fn spawn(mut config: EngineConfig, adapters: &[PathBuf]) -> anyhow::Result<(Local, Vec<AdapterId>)> {
    let ids: Vec<AdapterId> =
        (0..adapters.len()).map(|i| AdapterId::new(&format!("arg{i}")).expect("a valid id")).collect();
    config.catalog = Catalog { folders: ids.iter().cloned().zip(adapters.iter().cloned()).collect(), ..config.catalog };
    // Whole prompts in one step, as the lock-step runs before did: these commands measure answers, not latency.
    config.max_batch_tokens = Some(usize::MAX);
    let handle = engine::Engine::spawn(config)?;
    Ok((Local { handle }, ids))
}

/// A local engine.
pub struct Local {
    handle: EngineHandle,
}

/// One request's result.
#[derive(Clone, Debug)]
pub struct Output {
    /// Generated token ids (the end-of-sequence token included when it ended the sequence).
    pub tokens: Vec<u32>,
    /// The text, special tokens and stop sequences left out.
    pub text: String,
    /// Why generation ended.
    pub finish_reason: FinishReason,
}

impl Local {
    /// The engine.
    pub fn handle(&self) -> &EngineHandle {
        &self.handle
    }

    /// Runs `requests` together and returns their results in order; the first failure fails the whole (an adapter
    /// that does not load is named by its folder).
    pub fn run(&self, requests: Vec<GenerateRequest>) -> anyhow::Result<Vec<Output>> {
        let mut streams = Vec::with_capacity(requests.len());
        for request in requests {
            streams.push(self.handle.generate(request).map_err(|e| self.explain(e))?);
        }
        let mut outputs = Vec::with_capacity(streams.len());
        for mut stream in streams {
            let mut tokens = Vec::new();
            let finished = loop {
                match stream.blocking_next() {
                    Some(Ok(Event::Token(t))) => tokens.push(t.id),
                    Some(Ok(Event::Finished(f))) => break f,
                    Some(Err(e)) => return Err(self.explain(e)),
                    None => bail!("the engine ended a request without finishing it"),
                }
            };
            outputs.push(Output { tokens, text: finished.text, finish_reason: finished.reason });
        }
        Ok(outputs)
    }

    /// The folder of one of our adapter ids.
    pub fn folder(&self, id: &AdapterId) -> Option<&PathBuf> {
        self.handle.config().catalog.folders.get(id)
    }

    /// An engine error, with our adapter ids replaced by the folders the user gave.
    fn explain(&self, e: Error) -> anyhow::Error {
        match &e {
            Error::AdapterLoad { id, reason } => match self.folder(id) {
                Some(dir) => anyhow::anyhow!("adapter {}: {reason}", dir.display()),
                None => e.into(),
            },
            _ => e.into(),
        }
    }
}
