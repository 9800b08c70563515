//! [`MemLimiter`]: one budget of bytes for everything an instance allocates through
//! wasmtime — every linear memory and every table of every core instance in the
//! component — and a bound on how many memories, tables and core instances it may
//! create at all.
//!
//! wasmtime asks the limiter before creating a memory or table (`current` = 0,
//! `desired` = its minimum size) and before every growth, one memory or table at a
//! time. Counting each alone would let a component with N memories use N times the cap,
//! so the limiter keeps the running sum. Memories and tables never shrink, so the sum
//! only grows; a growth wasmtime refuses anyway (beyond the declared maximum) is refused
//! here without being counted.

/// Bytes counted per table element (a function reference: one pointer).
pub const TABLE_ELEMENT_BYTES: usize = 8;
/// Most linear memories one instance may create (all its core instances together).
pub const MAX_MEMORIES: usize = 8;
/// Most tables one instance may create.
pub const MAX_TABLES: usize = 64;
/// Most core instances one component may instantiate.
pub const MAX_CORE_INSTANCES: usize = 128;

/// Why a growth was refused: the error a trap or a failed instantiation carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimitHit {
    /// The cap, in bytes.
    pub cap: usize,
    /// What the memories and tables would have held together.
    pub wanted: usize,
}

impl std::fmt::Display for MemoryLimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory limit of {} bytes reached: the instance's memories and tables would hold {} bytes together",
            self.cap, self.wanted
        )
    }
}
impl std::error::Error for MemoryLimitHit {}

/// The byte budget of one store (one plugin instance).
#[derive(Debug)]
pub(crate) struct MemLimiter {
    max_bytes: usize,
    /// Bytes of all memories and tables created or grown so far.
    used: usize,
    /// Set when a growth was refused, so the trap is reported as the memory limit.
    pub(crate) hit: bool,
}

impl MemLimiter {
    pub(crate) fn new(max_bytes: usize) -> MemLimiter {
        MemLimiter {
            max_bytes,
            used: 0,
            hit: false,
        }
    }

    /// Bytes of memories and tables counted so far.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    fn grow(&mut self, add: usize) -> wasmtime::Result<bool> {
        let wanted = self.used.saturating_add(add);
        if wanted > self.max_bytes {
            self.hit = true;
            return Err(wasmtime::Error::new(MemoryLimitHit {
                cap: self.max_bytes,
                wanted,
            }));
        }
        self.used = wanted;
        Ok(true)
    }
}

impl wasmtime::ResourceLimiter for MemLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|m| desired > m) {
            // wasmtime refuses it after asking: `memory.grow` returns -1, nothing counted.
            return Ok(false);
        }
        self.grow(desired.saturating_sub(current))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        self.grow(
            desired
                .saturating_sub(current)
                .saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn memories_and_tables_share_one_budget() {
        let mut l = MemLimiter::new(100 << 20);
        // Three memories of 30 MiB each fit (90 MiB)...
        for _ in 0..3 {
            assert!(l.memory_growing(0, 30 << 20, None).unwrap());
        }
        assert_eq!(l.used(), 90 << 20);
        // ...a fourth does not, though it alone is far below the cap.
        let e = l.memory_growing(0, 30 << 20, None).unwrap_err();
        let hit = e.downcast_ref::<MemoryLimitHit>().unwrap();
        assert_eq!(
            (hit.cap, hit.wanted),
            (100 << 20, 120 << 20),
            "the error names the cap"
        );
        assert!(e.to_string().contains("104857600 bytes"), "{e}");
        assert!(l.hit);
        // Growing an existing memory counts only the growth.
        assert!(l.memory_growing(30 << 20, 35 << 20, None).unwrap());
        assert_eq!(l.used(), 95 << 20);
        // Table elements count too: 1 MiB of room left is 131072 elements.
        assert!(l
            .table_growing(0, (5 << 20) / TABLE_ELEMENT_BYTES, None)
            .unwrap());
        assert_eq!(l.used(), 100 << 20);
        assert!(l.table_growing(10, 11, None).is_err());
        // A growth beyond the declared maximum is refused without being counted.
        assert!(!l.memory_growing(0, 1 << 30, Some(1 << 20)).unwrap());
        assert_eq!(l.used(), 100 << 20);
    }

    #[test]
    fn counts_of_memories_tables_and_instances_are_bounded() {
        let l = MemLimiter::new(1);
        assert_eq!(
            (l.memories(), l.tables(), l.instances()),
            (MAX_MEMORIES, MAX_TABLES, MAX_CORE_INSTANCES)
        );
    }
}
