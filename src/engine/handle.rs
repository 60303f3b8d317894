//! The engine on its own thread. Clients (the async server, tests) submit requests through a
//! channel and read each request's events from its own stream; dropping a stream cancels the
//! request, and the engine frees its cache at the next step.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::engine::config::EngineConfig;
use crate::engine::core::{Engine, EngineInfo, SubmitError};
use crate::engine::detok::Detokenize;
use crate::engine::metrics::EngineMetrics;
use crate::engine::model::StepModel;
use crate::engine::request::{EngineEvent, GenerateRequest, RequestId};
use crate::error::{Error, Result};

enum Command {
    Add { id: RequestId, req: GenerateRequest, tx: UnboundedSender<EngineEvent> },
    Abort(RequestId),
    Shutdown { drain: bool },
}

/// A request's events, in order; the last one is `Finished` or `Failed`. Dropping it cancels the
/// request.
pub struct RequestStream {
    pub id: RequestId,
    rx: UnboundedReceiver<EngineEvent>,
}

impl RequestStream {
    /// The next event; `None` once the engine is gone.
    pub async fn recv(&mut self) -> Option<EngineEvent> {
        self.rx.recv().await
    }

    /// Blocking form of [`recv`](Self::recv), for threads outside an async runtime.
    pub fn blocking_recv(&mut self) -> Option<EngineEvent> {
        self.rx.blocking_recv()
    }
}

pub struct EngineHandle {
    cmd: Sender<Command>,
    info: EngineInfo,
    metrics: Arc<EngineMetrics>,
    next_id: AtomicU64,
    draining: AtomicBool,
    alive: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EngineHandle {
    /// Sizes the cache, then starts the engine thread.
    pub fn start(
        model: Box<dyn StepModel>,
        cfg: &EngineConfig,
        detok: Option<Arc<dyn Detokenize>>,
    ) -> Result<EngineHandle> {
        let engine = Engine::new(model, cfg, detok)?;
        let info = engine.info().clone();
        let metrics = engine.metrics();
        let (cmd, rx) = channel();
        let alive = Arc::new(AtomicBool::new(true));
        let alive2 = alive.clone();
        let thread = std::thread::Builder::new()
            .name("dsv3-engine".into())
            .spawn(move || {
                // Cleared however the loop ends, a panic included.
                struct Alive(Arc<AtomicBool>);
                impl Drop for Alive {
                    fn drop(&mut self) {
                        self.0.store(false, SeqCst);
                    }
                }
                let _alive = Alive(alive2);
                run_loop(engine, rx);
            })
            .map_err(|e| Error::io("starting the engine thread", e))?;
        Ok(EngineHandle {
            cmd,
            info,
            metrics,
            next_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            alive,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(SeqCst)
    }

    /// Refuses new requests from now on (503), while queued and running ones finish.
    pub fn stop_accepting(&self) {
        self.draining.store(true, SeqCst);
    }

    /// Checks and queues a request.
    pub fn submit(&self, req: GenerateRequest) -> std::result::Result<RequestStream, SubmitError> {
        if self.is_draining() {
            return Err(SubmitError::ShuttingDown);
        }
        if !self.is_alive() {
            return Err(SubmitError::EngineGone("the engine thread exited".into()));
        }
        self.info.check(&req)?;
        let waiting = self.metrics.num_waiting.load(Relaxed);
        if waiting >= self.info.max_queued_requests {
            return Err(SubmitError::Overloaded(waiting));
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        let (tx, rx) = unbounded_channel();
        self.cmd
            .send(Command::Add { id, req, tx })
            .map_err(|_| SubmitError::EngineGone("the engine thread exited".into()))?;
        Ok(RequestStream { id, rx })
    }

    /// Cancels a request (its stream gets a final `Abort`).
    pub fn abort(&self, id: RequestId) {
        let _ = self.cmd.send(Command::Abort(id));
    }

    /// Stops the engine: with `drain`, after every queued and running request has finished
    /// (new ones are refused meanwhile); without, at once, aborting them. Blocks until the engine
    /// thread has exited.
    pub fn shutdown(&self, drain: bool) {
        self.draining.store(true, SeqCst);
        let _ = self.cmd.send(Command::Shutdown { drain });
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        let _ = self.cmd.send(Command::Shutdown { drain: false });
    }
}

fn run_loop(mut engine: Engine, rx: Receiver<Command>) {
    let mut shutdown: Option<bool> = None;
    loop {
        if !engine.has_work() {
            if shutdown.is_some() {
                break;
            }
            match rx.recv() {
                Ok(c) => handle(&mut engine, c, &mut shutdown),
                Err(_) => break,
            }
        }
        while let Ok(c) = rx.try_recv() {
            handle(&mut engine, c, &mut shutdown);
        }
        if shutdown == Some(false) {
            engine.abort_all();
            break;
        }
        if !engine.has_work() {
            continue;
        }
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.step()));
        if stepped.is_err() {
            // A bug outside the model: the engine's state cannot be trusted. Dropping it closes
            // every stream, which the server reports as an error.
            tracing::error!("the engine panicked; stopping it");
            break;
        }
    }
    tracing::info!("engine stopped");
}

fn handle(engine: &mut Engine, c: Command, shutdown: &mut Option<bool>) {
    match c {
        Command::Add { id, req, tx } => {
            if shutdown.is_some() {
                let _ = tx.send(EngineEvent::Failed("the server is shutting down".into()));
            } else if let Err(e) = engine.add_request(id, req, tx.clone()) {
                let _ = tx.send(EngineEvent::Failed(e.to_string()));
            }
        }
        Command::Abort(id) => engine.abort(id),
        Command::Shutdown { drain } => {
            // A later "now" overrides an earlier "drain".
            *shutdown = Some(shutdown.map_or(drain, |d| d && drain));
        }
    }
}
