//! [`CompileSlots`]: how many plugin compilations run at once, per tenant and in all.
//!
//! An upload takes a slot or is refused at once (the admin API answers 503), so a
//! tenant that uploads slow components holds at most `per_tenant` slots and never the
//! whole machine; other tenants' uploads compile beside it. Compiling an uploaded
//! plugin for a pipeline (a cache miss) waits for a slot instead.

use std::collections::HashMap;

use parking_lot::{Condvar, Mutex};

/// Whether to wait for a free slot or be refused at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotWait {
    Yes,
    No,
}

#[derive(Default)]
struct Counts {
    all: usize,
    by_tenant: HashMap<String, usize>,
}

pub struct CompileSlots {
    global: usize,
    per_tenant: usize,
    counts: Mutex<Counts>,
    freed: Condvar,
}

/// One running compilation; its slot is freed on drop.
pub struct Slot<'a> {
    slots: &'a CompileSlots,
    tenant: String,
}

impl CompileSlots {
    pub fn new(global: usize, per_tenant: usize) -> CompileSlots {
        CompileSlots {
            global: global.max(1),
            per_tenant: per_tenant.max(1),
            counts: Mutex::new(Counts::default()),
            freed: Condvar::new(),
        }
    }

    /// A slot for `tenant`, or why there is none (with `SlotWait::No`).
    pub fn acquire(&self, tenant: &str, wait: SlotWait) -> Result<Slot<'_>, String> {
        let mut c = self.counts.lock();
        loop {
            let mine = c.by_tenant.get(tenant).copied().unwrap_or(0);
            let why = if mine >= self.per_tenant {
                Some(format!(
                    "tenant {tenant:?} already has {mine} plugin compilations running (max_compiles_per_tenant = {}); retry when they finish",
                    self.per_tenant
                ))
            } else if c.all >= self.global {
                Some(format!(
                    "{} plugin compilations are running (max_concurrent_compiles = {}); retry shortly",
                    c.all, self.global
                ))
            } else {
                None
            };
            match (why, wait) {
                (None, _) => {
                    c.all += 1;
                    *c.by_tenant.entry(tenant.to_owned()).or_default() += 1;
                    return Ok(Slot {
                        slots: self,
                        tenant: tenant.to_owned(),
                    });
                }
                (Some(why), SlotWait::No) => return Err(why),
                (Some(_), SlotWait::Yes) => self.freed.wait(&mut c),
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut c = self.slots.counts.lock();
        c.all -= 1;
        if let Some(n) = c.by_tenant.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                c.by_tenant.remove(&self.tenant);
            }
        }
        drop(c);
        self.slots.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_tenant_and_global_bounds() {
        let s = CompileSlots::new(2, 1);
        let a = s.acquire("a", SlotWait::No).unwrap();
        let e = s.acquire("a", SlotWait::No).err().unwrap();
        assert!(e.contains("max_compiles_per_tenant = 1"), "{e}");
        let b = s.acquire("b", SlotWait::No).unwrap();
        let e = s.acquire("c", SlotWait::No).err().unwrap();
        assert!(e.contains("max_concurrent_compiles = 2"), "{e}");
        drop(a);
        let _c = s.acquire("c", SlotWait::No).unwrap();
        // A waiter gets the slot when one is freed.
        std::thread::scope(|scope| {
            let h = scope.spawn(|| s.acquire("a", SlotWait::Yes).map(|_| ()));
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(b);
            assert_eq!(h.join().unwrap(), Ok(()));
        });
    }
}
