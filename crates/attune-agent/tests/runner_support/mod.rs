//! What the runner tests share: a job running in a task of its own, with its event stream and
//! stop switch.

use attune_agent::runner::{run_job, RunnerContext, StopRequest};
use attune_protocol::{AgentEvent, Job, JobReport};
use tokio::sync::{mpsc, watch};

/// A job running in a task, with its event stream and stop switch.
pub struct Running {
    pub events: mpsc::UnboundedReceiver<AgentEvent>,
    pub stop: watch::Sender<Option<StopRequest>>,
    pub task: tokio::task::JoinHandle<JobReport>,
}

/// Starts `job` in a task, as the agent does for each job it takes.
pub fn start(context: RunnerContext, job: Job) -> Running {
    let (sender, events) = mpsc::unbounded_channel();
    let (stop, stop_receiver) = watch::channel(None);
    let task = tokio::spawn(async move { run_job(&context, &job, &sender, stop_receiver).await });
    Running { events, stop, task }
}
