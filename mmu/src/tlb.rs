//! The device TLB: set-associative, tagged by context, holding 4 KiB, 2 MiB and 1 GiB entries side by side.
//!
//! # Concurrency
//! Lookups are lock-free: each set is a *seqlock*. A reader samples the set's version (even = stable), scans the
//! ways' tags, reads the matching data word, and re-checks the version; a change means a writer interfered and
//! the read is retried. All fields are atomics, so there is no `unsafe` and no data race. Writers (fills and
//! invalidations) serialise per set by moving the version to an odd value with a compare-exchange; a writer
//! that changed nothing restores the old even value so readers need not retry.
//!
//! Replacement is CLOCK (second chance), a pseudo-LRU: a hit sets the way's reference bit (a write only when
//! the bit is clear, so a steady stream of hits does not bounce the set's cache line), and a fill sweeps the
//! set's hand past referenced ways, clearing their bits, to the first unreferenced one.
//!
//! Set index: the virtual page number of the entry's size class, XORed with a per-(context, size) salt, modulo
//! the (power-of-two) set count; consecutive pages of one context land in consecutive sets. A lookup probes the
//! 4 KiB class, then 2 MiB, then 1 GiB.
//!
//! Hit/miss counting is done by the caller ([`Mmu`](crate::context::Mmu) counts per lane), so a hit costs no
//! shared write.

use crate::pad::CachePadded;
use crate::pte::{PageSize, Perms, PTE_ADDR_MASK, PTE_PERM_MASK, VA_LIMIT};
use crate::sync::{fence, spin_wait, AtomicU64, Ordering};
use crate::walker::Translation;

/// TLB geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbConfig {
    /// Number of sets: a power of two, 1..=65536.
    pub sets: u32,
    /// Ways per set: 1..=64.
    pub ways: u32,
}

impl Default for TlbConfig {
    fn default() -> Self {
        TlbConfig { sets: 64, ways: 8 }
    }
}

/// An invalid TLB geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlbConfigError {
    /// `sets` is not a power of two in 1..=65536.
    #[error("TLB sets must be a power of two in 1..=65536, got {0}")]
    BadSets(u32),
    /// `ways` is not in 1..=64.
    #[error("TLB ways must be in 1..=64, got {0}")]
    BadWays(u32),
}

/// One valid TLB entry, as reported by [`Tlb::entries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlbEntry {
    /// Context tag.
    pub ctx: u16,
    /// VA of the first byte of the page.
    pub va_base: u64,
    /// The cached leaf.
    pub translation: Translation,
}

const TAG_VALID: u64 = 1 << 63;
const TAG_CLASS_SHIFT: u32 = 61;
const TAG_CTX_SHIFT: u32 = 45;
const TAG_VPN_MASK: u64 = (1 << 36) - 1;

#[derive(Debug, Default)]
struct SetHeader {
    /// Seqlock version: odd while a writer owns the set.
    version: AtomicU64,
    /// CLOCK reference bits, one per way.
    refs: AtomicU64,
    /// CLOCK hand; only touched by the set's writer.
    hand: AtomicU64,
}

/// The TLB. See the module documentation for the concurrency design.
#[derive(Debug)]
pub struct Tlb {
    set_mask: u64,
    ways: usize,
    headers: Box<[CachePadded<SetHeader>]>,
    /// `[tag, data]` per way, sets one after the other.
    slots: Box<[AtomicU64]>,
}

fn class_of(tag: u64) -> PageSize {
    match (tag >> TAG_CLASS_SHIFT) & 3 {
        0 => PageSize::Size4K,
        1 => PageSize::Size2M,
        _ => PageSize::Size1G,
    }
}

fn make_tag(ctx: u16, size: PageSize, vpn: u64) -> u64 {
    TAG_VALID
        | ((size.index() as u64) << TAG_CLASS_SHIFT)
        | (u64::from(ctx) << TAG_CTX_SHIFT)
        | (vpn & TAG_VPN_MASK)
}

fn tag_ctx(tag: u64) -> u16 {
    (tag >> TAG_CTX_SHIFT) as u16
}

fn tag_va_range(tag: u64) -> (u64, u64) {
    let size = class_of(tag);
    let base = (tag & TAG_VPN_MASK) << size.shift();
    (base, base + size.bytes())
}

/// Exclusive access to one set; dropping it publishes the changes.
struct SetWriter<'t> {
    tlb: &'t Tlb,
    set: usize,
    start: u64,
    dirty: bool,
}

impl SetWriter<'_> {
    fn tag(&self, way: usize) -> u64 {
        self.tlb.slots[self.tlb.slot(self.set, way)].load(Ordering::Relaxed)
    }

    fn write(&mut self, way: usize, tag: u64, data: u64) {
        let s = self.tlb.slot(self.set, way);
        self.tlb.slots[s].store(tag, Ordering::Relaxed);
        self.tlb.slots[s + 1].store(data, Ordering::Relaxed);
        self.dirty = true;
    }

    fn clear_where(&mut self, mut pred: impl FnMut(u64) -> bool) -> usize {
        let mut n = 0;
        for way in 0..self.tlb.ways {
            let t = self.tag(way);
            if t & TAG_VALID != 0 && pred(t) {
                self.write(way, 0, 0);
                n += 1;
            }
        }
        n
    }
}

impl Drop for SetWriter<'_> {
    fn drop(&mut self) {
        let v = if self.dirty {
            self.start + 2
        } else {
            self.start
        };
        self.tlb.headers[self.set]
            .version
            .store(v, Ordering::Release);
    }
}

impl Tlb {
    /// Creates an empty TLB.
    pub fn new(config: TlbConfig) -> Result<Tlb, TlbConfigError> {
        if !config.sets.is_power_of_two() || config.sets > 65536 {
            return Err(TlbConfigError::BadSets(config.sets));
        }
        if config.ways == 0 || config.ways > 64 {
            return Err(TlbConfigError::BadWays(config.ways));
        }
        let sets = config.sets as usize;
        let ways = config.ways as usize;
        Ok(Tlb {
            set_mask: u64::from(config.sets) - 1,
            ways,
            headers: (0..sets)
                .map(|_| CachePadded(SetHeader::default()))
                .collect(),
            slots: (0..sets * ways * 2).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Number of sets.
    pub fn sets(&self) -> usize {
        self.headers.len()
    }

    /// Ways per set.
    pub fn ways(&self) -> usize {
        self.ways
    }

    /// Total entries (sets × ways).
    pub fn capacity(&self) -> usize {
        self.headers.len() * self.ways
    }

    fn slot(&self, set: usize, way: usize) -> usize {
        (set * self.ways + way) * 2
    }

    fn set_index(&self, ctx: u16, size: PageSize, vpn: u64) -> usize {
        let salt = (u64::from(ctx) | ((size.index() as u64) << 16))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            >> 40;
        ((vpn ^ salt) & self.set_mask) as usize
    }

    fn lock(&self, set: usize) -> SetWriter<'_> {
        let version = &self.headers[set].version;
        let mut i = 0;
        loop {
            let v = version.load(Ordering::Relaxed);
            if v & 1 == 0
                && version
                    .compare_exchange_weak(v, v + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                // Order the odd version before the entry writes (seqlock writer protocol).
                fence(Ordering::Release);
                return SetWriter {
                    tlb: self,
                    set,
                    start: v,
                    dirty: false,
                };
            }
            spin_wait(i);
            i = i.saturating_add(1);
        }
    }

    /// Looks `va` up for context `ctx`. A hit marks the way recently used.
    #[inline(always)]
    pub fn lookup(&self, ctx: u16, va: u64) -> Option<Translation> {
        if va >= VA_LIMIT {
            return None;
        }
        PageSize::ALL
            .into_iter()
            .find_map(|size| self.probe(ctx, va, size))
    }

    #[inline(always)]
    fn probe(&self, ctx: u16, va: u64, size: PageSize) -> Option<Translation> {
        let vpn = va >> size.shift();
        let want = make_tag(ctx, size, vpn);
        let set = self.set_index(ctx, size, vpn);
        let header = &self.headers[set];
        let base = self.slot(set, 0);
        let slots = &self.slots[base..base + 2 * self.ways];
        let mut i = 0;
        loop {
            let v1 = header.version.load(Ordering::Acquire);
            if v1 & 1 == 0 {
                let mut hit = None;
                for (way, pair) in slots.chunks_exact(2).enumerate() {
                    if pair[0].load(Ordering::Relaxed) == want {
                        hit = Some((way, pair[1].load(Ordering::Relaxed)));
                        break;
                    }
                }
                fence(Ordering::Acquire);
                if header.version.load(Ordering::Relaxed) == v1 {
                    let (way, data) = hit?;
                    let bit = 1u64 << way;
                    if header.refs.load(Ordering::Relaxed) & bit == 0 {
                        header.refs.fetch_or(bit, Ordering::Relaxed);
                    }
                    return Some(Translation {
                        page_base_pa: data & PTE_ADDR_MASK,
                        page_size: size,
                        perms: Perms::from_pte(data),
                    });
                }
            }
            spin_wait(i);
            i = i.saturating_add(1);
        }
    }

    /// Inserts the translation of the page containing `va`, replacing an entry for the same page if present.
    pub fn insert(&self, ctx: u16, va: u64, translation: &Translation) {
        self.insert_if(ctx, va, translation, || true);
    }

    /// Inserts like [`Tlb::insert`] if `cond` holds. `cond` runs while the target set is locked, so an
    /// invalidation that changes what `cond` reads *before* flushing the set either makes `cond` fail or
    /// flushes the new entry: this is how the walk-generation rule is enforced. Returns whether it inserted.
    pub fn insert_if(
        &self,
        ctx: u16,
        va: u64,
        translation: &Translation,
        cond: impl FnOnce() -> bool,
    ) -> bool {
        if va >= VA_LIMIT {
            return false;
        }
        let size = translation.page_size;
        let vpn = va >> size.shift();
        let tag = make_tag(ctx, size, vpn);
        let data =
            (translation.page_base_pa & PTE_ADDR_MASK) | (translation.perms.bits() & PTE_PERM_MASK);
        let set = self.set_index(ctx, size, vpn);
        let mut w = self.lock(set);
        if !cond() {
            return false;
        }
        let way = self.victim(&w, tag);
        w.write(way, tag, data);
        self.headers[set].refs.fetch_or(1 << way, Ordering::Relaxed);
        true
    }

    /// Chooses the way for `tag`: its current way, else a free way, else the CLOCK victim.
    fn victim(&self, w: &SetWriter<'_>, tag: u64) -> usize {
        let ways = self.ways;
        if let Some(way) = (0..ways).find(|&x| w.tag(x) == tag) {
            return way;
        }
        if let Some(way) = (0..ways).find(|&x| w.tag(x) & TAG_VALID == 0) {
            return way;
        }
        let header = &self.headers[w.set];
        let start = header.hand.load(Ordering::Relaxed) as usize % ways;
        // The sweep on one snapshot of the reference bits: the first unreferenced way from the hand on (or
        // the hand itself, once a whole sweep has cleared every bit), then one atomic clear of the bits
        // passed, rather than one per way. A hit that sets a bit meanwhile only changes the heuristic's
        // choice (it may lose its second chance); the entries are protected by the set lock, not by refs.
        let refs = header.refs.load(Ordering::Relaxed);
        let skip = (0..ways)
            .find(|&i| refs & (1 << ((start + i) % ways)) == 0)
            .unwrap_or(0);
        let hand = (start + skip) % ways;
        let passed = (0..skip.max(usize::from(refs & (1 << hand) != 0) * ways))
            .fold(0u64, |m, i| m | 1 << ((start + i) % ways));
        if passed != 0 {
            header.refs.fetch_and(!passed, Ordering::Relaxed);
        }
        header
            .hand
            .store(((hand + 1) % ways) as u64, Ordering::Relaxed);
        hand
    }

    /// Removes every entry of `ctx` overlapping `[va, va + len)`. Returns the number removed.
    pub fn invalidate(&self, ctx: u16, va: u64, len: u64) -> usize {
        let end = va.saturating_add(len).min(VA_LIMIT);
        if va >= end {
            return 0;
        }
        let pages_4k = ((end - 1) >> 12) - (va >> 12) + 1;
        if pages_4k > self.set_mask + 1 {
            return self.clear_where(|t| {
                let (s, e) = tag_va_range(t);
                tag_ctx(t) == ctx && s < end && va < e
            });
        }
        let mut n = 0;
        for size in PageSize::ALL {
            for vpn in (va >> size.shift())..=((end - 1) >> size.shift()) {
                let tag = make_tag(ctx, size, vpn);
                n += self
                    .lock(self.set_index(ctx, size, vpn))
                    .clear_where(|t| t == tag);
            }
        }
        n
    }

    /// Removes every entry of `ctx`. Returns the number removed.
    pub fn invalidate_ctx(&self, ctx: u16) -> usize {
        self.clear_where(|t| tag_ctx(t) == ctx)
    }

    /// Removes every entry. Returns the number removed.
    pub fn invalidate_all(&self) -> usize {
        self.clear_where(|_| true)
    }

    fn clear_where(&self, mut pred: impl FnMut(u64) -> bool) -> usize {
        (0..self.sets())
            .map(|set| self.lock(set).clear_where(&mut pred))
            .sum()
    }

    /// A snapshot of the valid entries (for tests and debugging; not atomic across sets).
    pub fn entries(&self) -> Vec<TlbEntry> {
        let mut out = Vec::new();
        for set in 0..self.sets() {
            let w = self.lock(set);
            for way in 0..self.ways {
                let tag = w.tag(way);
                if tag & TAG_VALID != 0 {
                    let data = self.slots[self.slot(set, way) + 1].load(Ordering::Relaxed);
                    out.push(TlbEntry {
                        ctx: tag_ctx(tag),
                        va_base: tag_va_range(tag).0,
                        translation: Translation {
                            page_base_pa: data & PTE_ADDR_MASK,
                            page_size: class_of(tag),
                            perms: Perms::from_pte(data),
                        },
                    });
                }
            }
        }
        out
    }

    /// Number of valid entries.
    pub fn occupancy(&self) -> usize {
        self.entries().len()
    }
}
