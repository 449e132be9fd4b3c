//! The one memory budget (`smtp.data_memory_bytes`) that SMTP reception and conversion share, so
//! messages being received plus messages being converted (and the decoded parts a delivery
//! holds) never add up past what the operator allowed. Reception never waits for it: a session
//! that finds it spent answers `452 4.3.1` (the SMTP side takes its permits with
//! `try_acquire`). Conversion waits for its share instead, since its message is already safe on
//! disk; a share larger than the whole budget is cut to the whole budget, so a message bigger
//! than all of it still converts, alone.
//!
//! The budget counts bytes in use; the process's resident size follows it only if freed big
//! buffers go back to the system, which [`return_big_buffers_to_the_system`] arranges. How much a
//! conversion takes, from the shape of its message, is [`conversion`]'s.

mod conversion;

pub use conversion::{MimeShape, conversion_bytes};

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Makes glibc give every freed allocation over 128 KiB back to the system at once. By default
/// glibc raises that threshold each time such a buffer is freed (up to 32 MiB), after which
/// message-sized buffers come from its heaps and stay resident, fragmented, once freed: 48
/// messages of 31.5 MB pushed the relay to twice its 512 MiB budget that way, and to 1.0 times
/// with a fixed threshold (`benches/memory_load.rs`). Call once at start-up, before threads.
pub fn return_big_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread
    // allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Permits of `unit` bytes each, `total` of them.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    unit: usize,
    total: u32,
}

impl MemoryBudget {
    /// A budget over `permits`, which were created holding `total` permits of `unit` bytes.
    pub fn new(permits: Arc<Semaphore>, unit: usize, total: usize) -> Self {
        MemoryBudget {
            permits,
            unit: unit.max(1),
            total: u32::try_from(total.max(1)).unwrap_or(u32::MAX),
        }
    }

    /// A budget of its own, of `bytes` bytes (tests, and a queue without an SMTP side).
    pub fn standalone(bytes: usize, unit: usize) -> Self {
        let total = (bytes / unit.max(1)).clamp(1, Semaphore::MAX_PERMITS);
        MemoryBudget::new(Arc::new(Semaphore::new(total)), unit, total)
    }

    /// Bytes free right now.
    pub fn available_bytes(&self) -> usize {
        self.permits.available_permits() * self.unit
    }

    /// The budget in bytes.
    pub fn total_bytes(&self) -> usize {
        self.total as usize * self.unit
    }

    fn units(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(self.unit))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total)
    }

    /// Waits until `bytes` (at most the whole budget) are free and takes them.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(self.units(bytes))
            .await
            .expect("the memory budget is never closed");
        Reservation {
            permit,
            unit: self.unit,
        }
    }
}

/// A share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    unit: usize,
}

impl Reservation {
    /// Gives back all but `bytes` (at least one permit stays until the reservation is dropped).
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.div_ceil(self.unit).max(1);
        let held = self.permit.num_permits();
        if held > keep {
            drop(self.permit.split(held - keep));
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.permit.num_permits() * self.unit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_share_bigger_than_the_budget_takes_all_of_it_and_shrinks() {
        let budget = MemoryBudget::standalone(10 * 1024, 1024);
        let mut all = budget.reserve(1 << 30).await;
        assert_eq!(all.bytes(), 10 * 1024);
        assert_eq!(budget.available_bytes(), 0);
        all.shrink_to(1500);
        assert_eq!(all.bytes(), 2048);
        assert_eq!(budget.available_bytes(), 8 * 1024);
        drop(all);
        assert_eq!(budget.available_bytes(), budget.total_bytes());
    }
}
