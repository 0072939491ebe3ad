//! Adapters, the device, its buffers and the dispatch of one kernel.

use crate::{Error, ErrorSlot, WgpuBuffer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// Options of [`crate::Wgpu::open`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// A lower cap on the size of one buffer than the adapter's, in bytes (tests of the
    /// planner's tiling use it to act as a small adapter).
    pub max_binding: Option<u64>,
}

/// What [`adapters`] lists of one adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Its index, as `--device wgpu:N` names it.
    pub ordinal: usize,
    /// The adapter's name, e.g. `NVIDIA H100` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// The graphics API: `Vulkan`, `Metal` or `Dx12`.
    pub api: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `Cpu` (a software rasteriser such as lavapipe), …
    pub kind: String,
    /// The driver and its version, where the adapter says.
    pub driver: String,
    /// The largest storage binding, in bytes.
    pub max_binding: u64,
    /// The device-local memory in bytes, and how much of it is free now, where the API says
    /// (Vulkan: the heaps, and their budget where the driver has `VK_EXT_memory_budget`; 0
    /// where unknown).
    pub memory: (u64, u64),
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wgpu:{}  {} ({}, {}{}), largest buffer {}",
            self.ordinal,
            self.name,
            self.api,
            self.kind,
            if self.driver.is_empty() {
                String::new()
            } else {
                format!(", {}", self.driver)
            },
            size_text(self.max_binding)
        )?;
        match self.memory {
            (0, _) => Ok(()),
            (total, 0) => write!(f, ", memory {}", nst_tensor::format_bytes(total)),
            (total, free) => write!(
                f,
                ", memory {} ({} free)",
                nst_tensor::format_bytes(total),
                nst_tensor::format_bytes(free)
            ),
        }
    }
}

/// A size for messages: in MB or GB, or in bytes below a megabyte.
fn size_text(b: u64) -> String {
    if b < 1_000_000 {
        format!("{b} bytes")
    } else {
        nst_tensor::format_bytes(b)
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    // No validation layers (they may not be installed); `WGPU_*` variables still apply.
    desc.flags = wgpu::InstanceFlags::empty().with_env();
    wgpu::Instance::new(desc)
}

fn all_adapters() -> Vec<wgpu::Adapter> {
    pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()))
}

fn binding_limit(l: &wgpu::Limits) -> u64 {
    l.max_storage_buffer_binding_size.min(l.max_buffer_size)
}

fn summary(ordinal: usize, a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    AdapterSummary {
        ordinal,
        name: info.name,
        api: format!("{:?}", info.backend),
        kind: format!("{:?}", info.device_type),
        driver: [info.driver, info.driver_info]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
        max_binding: binding_limit(&a.limits()),
        memory: adapter_memory(a),
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn adapter_memory(a: &wgpu::Adapter) -> (u64, u64) {
    crate::memory::of(a).unwrap_or((0, 0))
}

#[cfg(target_arch = "wasm32")]
fn adapter_memory(_: &wgpu::Adapter) -> (u64, u64) {
    (0, 0)
}

/// The adapters wgpu finds (Vulkan, Metal, DirectX 12), in the order `--device wgpu:N`
/// numbers them; an error when there are none.
pub fn adapters() -> Result<Vec<AdapterSummary>, Error> {
    let list: Vec<AdapterSummary> = all_adapters()
        .iter()
        .enumerate()
        .map(|(i, a)| summary(i, a))
        .collect();
    if list.is_empty() {
        return Err(no_adapter());
    }
    Ok(list)
}

fn no_adapter() -> Error {
    Error::Unavailable(
        "no Vulkan, Metal or DirectX 12 adapter was found (on Linux: install a Vulkan driver \
         and the loader, e.g. Debian's mesa-vulkan-drivers and libvulkan1)"
            .into(),
    )
}

/// The kernels: (module, entry points).
const MODULES: [(&str, &str, &[&str]); 5] = [
    (
        "elementwise",
        include_str!("shaders/elementwise.wgsl"),
        &["unary", "binary", "affine", "fill", "clamp_channels"],
    ),
    (
        "reduce",
        include_str!("shaders/reduce.wgsl"),
        &["sum_chunks", "sum_axis"],
    ),
    (
        "movement",
        include_str!("shaders/movement.wgsl"),
        &["broadcast", "narrow", "narrow_backward", "transpose"],
    ),
    (
        "pool",
        include_str!("shaders/pool.wgsl"),
        &["pool_forward", "pool_backward"],
    ),
    ("gemm", include_str!("shaders/gemm.wgsl"), &["gemm"]),
];

const COMMON: &str = include_str!("shaders/common.wgsl");

/// The device of an opened adapter.
pub(crate) struct Inner {
    pub(crate) summary: AdapterSummary,
    pub(crate) max_binding: u64,
    /// Elements per binding of a buffer split over several (image-sized vectors over the
    /// largest binding): a multiple of the sums' chunk where the limit allows, so a split sum
    /// adds the same partial sums as a whole one.
    pub(crate) chunk: usize,
    pub(crate) max_groups: u32,
    pub(crate) host_memory: bool,
    /// The adapter, for its memory now.
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    layout: wgpu::BindGroupLayout,
    pipelines: HashMap<&'static str, wgpu::ComputePipeline>,
    /// Bound where a kernel does not read an operand.
    dummy: wgpu::Buffer,
    errors: ErrorSlot,
    /// One submission at a time: a download waits for what was submitted before it.
    submit: Mutex<()>,
}

impl Inner {
    pub(crate) fn open(ordinal: usize, options: Options) -> Result<Self, Error> {
        let mut list = all_adapters();
        if list.is_empty() {
            return Err(no_adapter());
        }
        if ordinal >= list.len() {
            return Err(Error::Unavailable(format!(
                "there is no adapter {ordinal}: {} found (`nst devices` lists them)",
                list.len()
            )));
        }
        let adapter = list.swap_remove(ordinal);
        let summary = summary(ordinal, &adapter);
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("nst"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        }))
        .map_err(|e| Error::Unavailable(format!("{}: {e}", summary.name)))?;
        let errors: ErrorSlot = Arc::new(Mutex::new(None));
        let slot = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            if s.is_none() {
                *s = Some(e.to_string());
            }
        }));
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("nst"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                storage(1, true),
                storage(2, true),
                storage(3, true),
                storage(4, false),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("nst"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let mut pipelines = HashMap::new();
        for (name, src, entries) in MODULES {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(format!("{COMMON}\n{src}").into()),
            });
            for &entry in entries {
                let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                });
                pipelines.insert(entry, p);
            }
        }
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused operand"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        if let Some(e) = errors.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(Error::Device(format!("compiling the kernels: {e}")));
        }
        let adapter_limit = binding_limit(&limits);
        let max_binding = options
            .max_binding
            .map_or(adapter_limit, |m| m.min(adapter_limit))
            .max(1024);
        let elements = usize::try_from(max_binding / 4).unwrap_or(usize::MAX);
        let chunk = if elements >= crate::ops::CHUNK {
            elements / crate::ops::CHUNK * crate::ops::CHUNK
        } else {
            elements / 256 * 256
        };
        Ok(Inner {
            max_binding,
            chunk,
            max_groups: limits.max_compute_workgroups_per_dimension.max(1),
            host_memory: adapter.get_info().device_type == wgpu::DeviceType::Cpu,
            adapter,
            summary,
            device,
            queue,
            layout,
            pipelines,
            dummy,
            errors,
            submit: Mutex::new(()),
        })
    }

    /// The device-local memory and how much is free now (see [`AdapterSummary::memory`]).
    pub(crate) fn memory_now(&self) -> (u64, u64) {
        adapter_memory(&self.adapter)
    }

    /// The error the device reported since the last check, if any.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match self.errors.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(Error::Device(e)),
            None => Ok(()),
        }
    }

    fn bytes_of(&self, len: usize) -> Result<u64, Error> {
        let bytes = (len.max(1) as u64).saturating_mul(4);
        if bytes > self.max_binding {
            return Err(Error::Device(format!(
                "a buffer of {} exceeds this adapter's largest binding ({}): render in tiles \
                 (--tile auto) or with a larger adapter",
                size_text(bytes),
                size_text(self.max_binding)
            )));
        }
        Ok(bytes)
    }

    const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
        .union(wgpu::BufferUsages::COPY_SRC)
        .union(wgpu::BufferUsages::COPY_DST);

    /// The element ranges of a buffer of `len` elements: one per binding, [`Inner::chunk`]
    /// elements each but the last.
    pub(crate) fn ranges(&self, len: usize) -> Vec<std::ops::Range<usize>> {
        if len == 0 {
            // One empty binding (every buffer has at least one).
            return std::iter::once(0..0).collect();
        }
        (0..len.div_ceil(self.chunk))
            .map(|i| i * self.chunk..((i + 1) * self.chunk).min(len))
            .collect()
    }

    fn raw(&self, len: usize) -> Result<wgpu::Buffer, Error> {
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: self.bytes_of(len)?,
            usage: Self::USAGE,
            mapped_at_creation: false,
        });
        self.check()?;
        Ok(buf)
    }

    /// A new buffer of `len` elements, uninitialised (every kernel writes its whole output),
    /// split over bindings where it exceeds the largest.
    pub(crate) fn alloc(&self, len: usize) -> Result<WgpuBuffer, Error> {
        let chunks = self
            .ranges(len)
            .into_iter()
            .map(|r| self.raw(r.len()))
            .collect::<Result<_, _>>()?;
        Ok(WgpuBuffer { chunks, len })
    }

    /// A new buffer of `len` elements in one binding (an error where it cannot be).
    pub(crate) fn alloc_whole(&self, len: usize) -> Result<WgpuBuffer, Error> {
        Ok(WgpuBuffer {
            chunks: vec![self.raw(len)?],
            len,
        })
    }

    pub(crate) fn upload(&self, data: &[f32]) -> Result<WgpuBuffer, Error> {
        let mut chunks = Vec::new();
        for r in self.ranges(data.len()) {
            self.bytes_of(r.len())?;
            let mut bytes: Vec<u8> = data[r].iter().flat_map(|v| v.to_le_bytes()).collect();
            if bytes.is_empty() {
                bytes.resize(4, 0);
            }
            chunks.push(
                self.device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: None,
                        contents: &bytes,
                        usage: Self::USAGE,
                    }),
            );
            self.check()?;
        }
        Ok(WgpuBuffer {
            chunks,
            len: data.len(),
        })
    }

    pub(crate) fn download(&self, x: &WgpuBuffer) -> Result<Vec<f32>, Error> {
        let mut out = Vec::with_capacity(x.len);
        for (r, chunk) in self.ranges(x.len).into_iter().zip(&x.chunks) {
            if !r.is_empty() {
                self.download_chunk(chunk, r.len(), &mut out)?;
            }
        }
        Ok(out)
    }

    fn download_chunk(
        &self,
        buf: &wgpu::Buffer,
        len: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), Error> {
        let size = len as u64 * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("download"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, size);
        let _one = self.submit.lock().unwrap_or_else(|p| p.into_inner());
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(e.to_string()))?;
        self.check()?;
        rx.recv()
            .map_err(|e| Error::Device(e.to_string()))?
            .map_err(|e| Error::Device(e.to_string()))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Device(e.to_string()))?;
        out.extend(
            view.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        drop(view);
        staging.unmap();
        Ok(())
    }

    /// Copies element ranges `(from, to, len)` of `src` into `dst`, across their bindings, in
    /// one submission.
    pub(crate) fn copy(
        &self,
        src: &WgpuBuffer,
        dst: &WgpuBuffer,
        segments: &[(usize, usize, usize)],
    ) -> Result<(), Error> {
        let mut enc = self.device.create_command_encoder(&Default::default());
        for &(mut from, mut to, mut len) in segments {
            while len > 0 {
                let (sc, so) = (from / self.chunk, from % self.chunk);
                let (dc, dof) = (to / self.chunk, to % self.chunk);
                let n = len.min(self.chunk - so).min(self.chunk - dof);
                enc.copy_buffer_to_buffer(
                    &src.chunks[sc],
                    so as u64 * 4,
                    &dst.chunks[dc],
                    dof as u64 * 4,
                    n as u64 * 4,
                );
                from += n;
                to += n;
                len -= n;
            }
        }
        let _one = self.submit.lock().unwrap_or_else(|p| p.into_inner());
        self.queue.submit([enc.finish()]);
        self.check()
    }

    /// Runs `entry` with parameters `params` (at most 32), operands `inputs` (at most 3) and
    /// output `out`, on `groups` workgroups (x, y, z).
    pub(crate) fn dispatch(
        &self,
        entry: &str,
        params: &[u32],
        inputs: &[&wgpu::Buffer],
        out: &wgpu::Buffer,
        groups: (u32, u32, u32),
    ) -> Result<(), Error> {
        debug_assert!(params.len() <= 32 && inputs.len() <= 3);
        if groups.0 == 0 || groups.1 == 0 || groups.2 == 0 {
            return Ok(());
        }
        let pipeline = self
            .pipelines
            .get(entry)
            .ok_or_else(|| Error::Device(format!("no kernel {entry}")))?;
        let mut p = [0u32; 32];
        p[..params.len()].copy_from_slice(params);
        let bytes: Vec<u8> = p.iter().flat_map(|v| v.to_le_bytes()).collect();
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: &bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let operand = |i: usize| inputs.get(i).copied().unwrap_or(&self.dummy);
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: operand(0).as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: operand(1).as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: operand(2).as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 4,
                    resource: out.as_entire_binding(),
                },
            ],
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        }
        let _one = self.submit.lock().unwrap_or_else(|p| p.into_inner());
        self.queue.submit([enc.finish()]);
        self.check()
    }

    /// The grid of a 256-wide kernel over `n` invocations: (x, y, 1) with x at most the
    /// adapter's limit (the kernels' `flat` index undoes it).
    pub(crate) fn grid(&self, n: usize) -> Result<(u32, u32, u32), Error> {
        self.spread(n.div_ceil(256))
    }

    /// `groups` workgroups as (x, y, 1), x at most the adapter's limit.
    pub(crate) fn spread(&self, groups: usize) -> Result<(u32, u32, u32), Error> {
        let max = self.max_groups as usize;
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(Error::Device(format!(
                "{groups} workgroups exceed the adapter's grid"
            )));
        }
        Ok((if groups == 0 { 0 } else { x as u32 }, y as u32, 1))
    }
}
