//! What reaches the core from outside a task's own code: its output and
//! progress (through its context) and the outbox's reports of its writes.

use serde_json::Value;

use super::Core;
use super::registry::is_collectable;
use super::task::TaskHost;
use super::task::TaskSlot;
use crate::manager::clock::duration_ms;
use crate::manager::outbox::{WriteOutcome, WriteReport, WriteReports};
use crate::records::Change;
use crate::{Progress, TaskError, TaskEventKind, TaskStatus, validate};

use super::OUTPUTS_KEPT;

impl TaskHost for Core {
    fn output(&self, slot: &TaskSlot, value: Value) -> Result<(), TaskError> {
        validate::json_depth("output", &value)?;
        let Some(core) = self.myself.upgrade() else {
            return Err(TaskError::ShuttingDown);
        };
        let mut entry = slot.lock();
        if entry.status != TaskStatus::Running {
            return Err(TaskError::NotRunning {
                task_id: slot.task_id.clone(),
                status: entry.status,
            });
        }
        entry.output_seq += 1;
        let seq = entry.output_seq;
        if core.listened() {
            core.emit(slot, TaskEventKind::Output(value.clone()));
        }
        match &core.outbox {
            Some(outbox) => {
                outbox.has_room()?;
                let output = Change::Output {
                    attempt: slot.attempt,
                    seq,
                    value,
                };
                core.queue_change(slot, &mut entry, output, None, None);
            }
            None => {
                let outputs = entry.outputs.get_or_insert_with(Box::default);
                if outputs.len() == OUTPUTS_KEPT {
                    outputs.pop_front();
                }
                outputs.push_back((seq, value));
            }
        }
        Ok(())
    }

    fn checkpoint(&self, slot: &TaskSlot, value: Value) -> Result<(), TaskError> {
        self.save_checkpoint(slot, value)
    }

    fn progress(&self, slot: &TaskSlot, fraction: Option<f64>, message: Option<String>) {
        let mut entry = slot.lock();
        if entry.status != TaskStatus::Running {
            return;
        }
        let progress = Progress {
            fraction: fraction
                .filter(|f| f.is_finite())
                .map(|f| f.clamp(0.0, 1.0)),
            message,
            at_ms: self.clock.now_ms(),
        };
        if self.listened() {
            self.emit(slot, TaskEventKind::Progress(progress.clone()));
        }
        entry.progress = Some(progress);
    }
}

impl Core {
    /// A checkpoint of a running task: kept for its next attempt here, and
    /// written to its record with a store.
    fn save_checkpoint(&self, slot: &TaskSlot, value: Value) -> Result<(), TaskError> {
        validate::json_depth("checkpoint", &value)?;
        let mut entry = slot.lock();
        if entry.status != TaskStatus::Running {
            return Err(TaskError::NotRunning {
                task_id: slot.task_id.clone(),
                status: entry.status,
            });
        }
        let extra = entry.extra();
        extra.checkpoint_seq += 1;
        let seq = extra.checkpoint_seq;
        extra.checkpoint = Some(value.clone());
        let checkpoint = crate::Transition::Checkpoint {
            attempt: slot.attempt,
            seq,
            value,
            at_ms: self.clock.now_ms(),
        };
        self.queue_change(slot, &mut entry, Change::Transition(checkpoint), None, None);
        Ok(())
    }
}

impl WriteReports for Core {
    fn written(&self, report: WriteReport<'_>) {
        let Some(slot) = self.slot_of(report.task_id) else {
            return;
        };
        let Some(core) = self.myself.upgrade() else {
            return;
        };
        let collectable = {
            let mut entry = slot.lock();
            entry.resolve_pending(report.resolved);
            if slot.seq != report.epoch {
                // A report of an earlier epoch of the id: only its count of
                // pending writes carried over to this one.
                return;
            }
            let kind = match report.outcome {
                WriteOutcome::Durable(record) => {
                    // A cancel another process wrote on the record reaches
                    // the task even if its inbox message never does.
                    if record.cancel_requested_at_ms.is_some()
                        && record.attempt == slot.attempt
                        && entry.status == TaskStatus::Running
                    {
                        core.request_cancel(&slot, &mut entry);
                    }
                    if record.is_closed()
                        && let Some(hook) = self.on_durable_close.get()
                    {
                        (hook.0)(&slot.task_id);
                    }
                    if !report.drained {
                        None
                    } else {
                        entry.persistence_error = None;
                        Some(TaskEventKind::Persisted)
                    }
                }
                WriteOutcome::Failed { error, permanent } => {
                    let error = error.to_string();
                    entry.persistence_error = Some(error.clone());
                    Some(TaskEventKind::PersistenceFailed { error, permanent })
                }
                WriteOutcome::Delayed { pending_for } => Some(TaskEventKind::PersistenceDelayed {
                    pending_for_ms: duration_ms(pending_for),
                }),
            };
            if let Some(kind) = kind {
                self.emit(&slot, kind);
            }
            report.resolved > 0 && entry.pending_writes == 0 && is_collectable(&slot, &entry)
        };
        if collectable {
            self.became_collectable(&slot);
        }
    }
}
