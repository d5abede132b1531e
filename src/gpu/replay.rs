//! Recorded steps: a training step whose shapes do not change, built once into a fixed list
//! of dispatches and replayed many times per submission.
//!
//! Building a step on the tape costs host work every step: the tape's nodes, the pool, the
//! fuser's analysis, a parameter block and a bind-group lookup per dispatch, and one submit.
//! [`Gpu::record_step`] runs that build once, keeps its dispatches (after fusion) with their
//! buffers, parameter blocks and bind groups, and [`Recording::replay`] encodes them K times
//! into one compute pass. What differs between steps lives on the device, in the recording's
//! counter `ctl` (words `CTL_*` of `shaders/common.wgsl`): the training step, from which each
//! Philox draw of the step takes its counter, and the steps since the recorded one, from
//! which the optimiser's t (Adam's bias corrections) and a decaying learning rate follow;
//! the last dispatch of every replayed step advances it (`shaders/replay.wgsl`). Everything else a step reads is a device buffer it updates
//! itself (parameters, optimiser state, spectral-norm vectors), so replaying K steps is K
//! steps.
//!
//! The draws of replayed step s are Philox blocks (t, j, s) under the draw's own seed, with j
//! the draw's place among the step's distinct draws (`shaders/philox.wgsl`): a function of
//! (seed, step, place) alone, so a run resumed at step s and recorded again sees the same
//! numbers as one that never stopped. They are other numbers than the same step built on
//! the tape would draw (its streams come from host counters): both are reproducible.
//!
//! What cannot be recorded is refused while recording: a step that reads, writes or waits
//! for the device (its host part would run once, not every step), and the fused MVL step
//! (it keeps its own counter and already runs many steps per submission). A recording
//! belongs to the thread that makes it: other threads sharing the device go on as usual.
//!
//! State a step hands to the next through the host — a tensor the host swaps for a new one
//! every step, rather than a buffer the step overwrites — would be read from the recorded
//! buffer at every replay: a step meant for replay keeps its state in place (the VAE's and
//! the trainer's do).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

use super::launch::{Bind, Binding, Dispatch, Kernel, Params, Pipe, MAX_PENDING};
use super::pool::PooledBuffer;
use super::Gpu;

/// Words of the counter `ctl` (u32), as `CTL_*` in `shaders/common.wgsl`.
pub(crate) mod ctl {
    /// The training step whose draws a replayed step makes (low and high word).
    pub const STEP_LO: usize = 0;
    pub const STEP_HI: usize = 1;
    /// Steps since the recorded one: a replayed optimiser step's t is the recorded t plus
    /// this, its learning rate the recorded one plus this times the rate's slope.
    pub const REPLAYED: usize = 2;
    /// Words in the counter (one vec4 of u32).
    pub const WORDS: usize = 4;
}

/// What the ops consult while a step is being recorded, one per recording thread: other
/// threads sharing the device go on as usual (their dispatches go to the pending list, their
/// reads and flushes are theirs).
pub(crate) struct Recorder {
    thread: std::thread::ThreadId,
    /// The step's dispatches, in order (instead of the shared pending list).
    list: Vec<Dispatch>,
    ctl: Arc<PooledBuffer>,
    /// The Philox words (stream, seed) of each distinct draw of the step, in order: a draw's
    /// place j. A step that reads one draw twice gets the same numbers twice when replayed.
    draws: Vec<[u32; 4]>,
}

/// A step built once and replayed ([`Gpu::record_step`]); `T` is what the build returned (device
/// tensors such as the step's loss, which every replay overwrites).
pub struct Recording<T> {
    list: Vec<Dispatch>,
    groups: Vec<Arc<wgpu::BindGroup>>,
    /// The parameter blocks of `list`, at the launcher's stride.
    params: Vec<u8>,
    ctl: Arc<PooledBuffer>,
    /// The training step the build was (the optimiser's recorded t is that step's).
    step0: u64,
    replayed: AtomicU64,
    value: T,
}

fn ctl_binding(ctl: &Arc<PooledBuffer>) -> Binding {
    (ctl.clone(), 0, 4 * ctl::WORDS as u64)
}

impl Gpu {
    /// Runs `f` on this thread's recorder, if it is recording a step.
    fn with_recorder<R>(&self, f: impl FnOnce(Option<&mut Recorder>) -> R) -> Result<R> {
        let mut all = self
            .recording
            .lock()
            .map_err(|_| Error::Gpu("recording state poisoned".into()))?;
        let me = std::thread::current().id();
        Ok(f(all.iter_mut().find(|r| r.thread == me)))
    }

    /// Whether this thread is recording a step (its ops then make their draws and optimiser
    /// steps read the recording's counter, and it may not touch the device from the host).
    pub(crate) fn is_recording(&self) -> bool {
        self.with_recorder(|r| r.is_some()).unwrap_or(false)
    }

    /// Takes the dispatch into this thread's recording, if it is recording (leaving `None`);
    /// returns the recording's length then.
    pub(crate) fn take_recorded(&self, d: &mut Option<Dispatch>) -> Result<Option<usize>> {
        self.with_recorder(|r| {
            let r = r?;
            r.list.extend(d.take());
            Some(r.list.len())
        })
    }

    /// Inside a recording, turns a Philox dispatch's parameter block (draw words in `u`)
    /// into a replayed draw: its place in the step in `a_cols`, the flag in `a_rows`; returns
    /// the counter to bind at binding 2. Outside one, changes nothing and returns `None`.
    pub(crate) fn replay_draw(&self, params: &mut Params) -> Result<Option<Binding>> {
        self.with_recorder(|r| {
            let rec = r?;
            let j = match rec.draws.iter().position(|w| *w == params.u) {
                Some(j) => j,
                None => {
                    rec.draws.push(params.u);
                    rec.draws.len() - 1
                }
            };
            params.a_rows = 1;
            params.a_cols = j as u32;
            Some(ctl_binding(&rec.ctl))
        })
    }

    /// The counter binding of an optimiser step (`shaders/optim.wgsl`, binding 5): inside a
    /// recording the step's t is the recorded `t` plus the steps since the recorded one, and
    /// so is its learning rate (f0 + `lr_slope` per step); Adam takes its bias corrections
    /// from that t (ln β₁ and ln β₂ from `f`).
    pub(crate) fn replay_update(
        &self,
        params: &mut Params,
        t: u32,
        lr_slope: f32,
    ) -> Result<Binding> {
        let Some(ctl) = self.with_recorder(|r| r.map(|r| r.ctl.clone()))? else {
            return Ok((self.dummy.clone(), 0, 16));
        };
        params.a_rows = 1;
        params.a_cols = t;
        params.b_rows = lr_slope.to_bits();
        if params.code == ADAM {
            let ln = |b: f32| ((b as f64).ln() as f32).to_bits();
            params.u[2] = ln(params.f[1]);
            params.u[3] = ln(params.f[3]);
        }
        Ok(ctl_binding(&ctl))
    }

    /// Build training step `step` (0-based: the optimiser's t after it is the one `build`
    /// records) once for replaying: runs `build`, which records the step's kernels as usual
    /// (nothing runs), and keeps them, fused, with their buffers and bind groups.
    /// Work recorded before is submitted first. Refused, with nothing run, where the step
    /// needs the host (a read, write or wait inside `build`), holds a fused MVL step, or
    /// exceeds one submission.
    pub fn record_step<T>(
        &self,
        step: u64,
        build: impl FnOnce() -> Result<T>,
    ) -> Result<Recording<T>> {
        if self.is_recording() {
            return Err(Error::Invalid(
                "this thread is already recording a step; record one step at a time".into(),
            ));
        }
        self.flush()?;
        let ctl = self.alloc(4 * ctl::WORDS as u64)?;
        let me = std::thread::current().id();
        self.recording
            .lock()
            .map_err(|_| Error::Gpu("recording state poisoned".into()))?
            .push(Recorder {
                thread: me,
                list: Vec::new(),
                ctl: ctl.clone(),
                draws: Vec::new(),
            });
        // Taken out again however `build` ends (a panic included): the thread is not left
        // recording.
        let guard = Unrecord { gpu: self, me };
        let built = build();
        let list = guard.take();
        // A failed build leaves nothing behind: its dispatches are dropped unrun.
        let value = built?;
        if list.is_empty() {
            return Err(Error::Invalid(
                "the step to record launched no kernels; build it inside the closure given to record_step".into(),
            ));
        }
        if list.iter().any(|d| matches!(d.bind, Bind::Prebuilt(_))) {
            return Err(fused_inside());
        }
        let mut list = super::fuse::fuse(self, list)?;
        list.push(Dispatch {
            pipe: Pipe::Builtin(Kernel::Advance),
            bind: Bind::Buffers {
                layout: 0,
                buffers: vec![
                    (self.dummy.clone(), 0, 16),
                    (self.dummy.clone(), 0, 16),
                    ctl_binding(&ctl),
                ],
            },
            params: Params::default().block(),
            groups: [1, 1, 1],
            ew: None,
        });
        if list.len() > MAX_PENDING {
            return Err(Error::Invalid(format!(
                "the recorded step is {} dispatches after fusion, above the {MAX_PENDING} of one submission",
                list.len()
            )));
        }
        let groups = self.bind_groups(&list)?;
        let stride = self.launcher.param_stride as usize;
        let mut params = vec![0u8; list.len() * stride];
        for (i, d) in list.iter().enumerate() {
            params[i * stride..i * stride + super::launch::PARAM_BYTES]
                .copy_from_slice(bytemuck::cast_slice(&d.params));
        }
        Ok(Recording {
            list,
            groups,
            params,
            ctl,
            step0: step,
            replayed: AtomicU64::new(0),
            value,
        })
    }
}

/// Removes a thread's recorder when dropped (see [`Gpu::record_step`]).
struct Unrecord<'a> {
    gpu: &'a Gpu,
    me: std::thread::ThreadId,
}

impl Unrecord<'_> {
    /// The recorded dispatches, the recorder removed.
    fn take(self) -> Vec<Dispatch> {
        self.remove()
    }

    fn remove(&self) -> Vec<Dispatch> {
        let Ok(mut all) = self.gpu.recording.lock() else {
            return Vec::new();
        };
        let at = all.iter().position(|r| r.thread == self.me);
        at.map(|i| all.swap_remove(i).list).unwrap_or_default()
    }
}

impl Drop for Unrecord<'_> {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The refusal of a fused MVL step inside a recording (which the fused step also gives before
/// touching the device).
pub(crate) fn fused_inside() -> Error {
    Error::Invalid(
        "a fused MVL step cannot be part of a recorded step: it keeps its own step counter and already runs many steps per submission; record the tape's steps only".into(),
    )
}

/// Adam's rule code (`shaders/optim_lib.wgsl`).
const ADAM: u32 = 2;

impl<T> Recording<T> {
    /// What the build returned (device tensors hold the last replayed step's values).
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Dispatches per replayed step (after fusion, with the counter's advance).
    pub fn dispatches(&self) -> usize {
        self.list.len()
    }

    /// Steps replayed so far.
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    /// Run training steps `step .. step + steps` in one submission (does not wait): the
    /// draws of each are those of its step number, the optimiser's t and learning rate those
    /// of its distance from the recorded step. Work recorded before runs first.
    pub fn replay(&self, gpu: &Gpu, step: u64, steps: u32) -> Result<()> {
        if steps == 0 {
            return Ok(());
        }
        gpu.flush()?;
        let _submitting = gpu
            .submitting
            .lock()
            .map_err(|_| Error::Gpu("submit lock poisoned".into()))?;
        gpu.check()?;
        if gpu.is_recording() {
            return Err(Error::Invalid(
                "a recorded step cannot be replayed while another is being recorded".into(),
            ));
        }
        let since = step
            .checked_sub(self.step0)
            .filter(|d| d + (steps as u64) < u32::MAX as u64);
        let Some(since) = since else {
            return Err(Error::Invalid(format!(
                "a step recorded at step {} replays steps {} .. {} + 2³² − 1, not from {step}; record the step again",
                self.step0, self.step0, self.step0
            )));
        };
        let mut words = [0u32; ctl::WORDS];
        words[ctl::STEP_LO] = step as u32;
        words[ctl::STEP_HI] = (step >> 32) as u32;
        words[ctl::REPLAYED] = since as u32;
        // Both land before this submission and after everything submitted earlier.
        gpu.queue
            .write_buffer(self.ctl.raw(), 0, bytemuck::cast_slice(&words));
        gpu.queue
            .write_buffer(&gpu.launcher.params_buf, 0, &self.params);
        let stride = gpu.launcher.param_stride as usize;
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("wmvl replay"),
                timestamp_writes: None,
            });
            for _ in 0..steps {
                for (i, (d, g)) in self.list.iter().zip(&self.groups).enumerate() {
                    match &d.pipe {
                        Pipe::Builtin(k) => pass.set_pipeline(gpu.pipeline(*k)),
                        Pipe::Custom(c) => pass.set_pipeline(&c.pipeline),
                    }
                    pass.set_bind_group(0, Some(&**g), &[(i * stride) as u32]);
                    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                }
            }
        }
        gpu.queue.submit([encoder.finish()]);
        gpu.launcher
            .submitted
            .fetch_add(steps as u64 * self.list.len() as u64, Ordering::Relaxed);
        self.replayed.fetch_add(steps as u64, Ordering::Relaxed);
        gpu.check()
    }
}
