//! A Vulkan adapter's memory, read through wgpu-hal: wgpu itself does not report it.

/// (device-local bytes, of which free now) of a Vulkan adapter: the sizes of its device-local
/// heaps, and their budget less their usage where the driver has `VK_EXT_memory_budget` (0
/// where it has not). `None` on other APIs.
pub(crate) fn of(adapter: &wgpu::Adapter) -> Option<(u64, u64)> {
    // SAFETY: the hal adapter is only read, while `adapter` (which owns it) is borrowed.
    let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let phd = hal.raw_physical_device();
    let shared = hal.shared_instance();
    let instance = shared.raw_instance();
    // SAFETY: a physical device of this instance; core Vulkan 1.0.
    let props = unsafe { instance.get_physical_device_memory_properties(phd) };
    let heaps = &props.memory_heaps[..props.memory_heap_count as usize];
    let local = |i: usize| {
        heaps[i]
            .flags
            .contains(ash::vk::MemoryHeapFlags::DEVICE_LOCAL)
    };
    let total: u64 = (0..heaps.len())
        .filter(|&i| local(i))
        .map(|i| heaps[i].size)
        .sum();
    let budget_ok = shared.instance_api_version() >= ash::vk::API_VERSION_1_1
        && hal
            .physical_device_capabilities()
            .supports_extension(ash::ext::memory_budget::NAME);
    let mut free = 0u64;
    if budget_ok {
        let mut budget = ash::vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
        let mut props2 = ash::vk::PhysicalDeviceMemoryProperties2::default().push_next(&mut budget);
        // SAFETY: Vulkan 1.1 and the extension are present (checked above).
        unsafe { instance.get_physical_device_memory_properties2(phd, &mut props2) };
        free = (0..heaps.len())
            .filter(|&i| local(i))
            .map(|i| budget.heap_budget[i].saturating_sub(budget.heap_usage[i]))
            .sum();
    }
    Some((total, free))
}
