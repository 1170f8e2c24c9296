//! Deliberate faults in the day protocol, for proving that the simulation (`tests/sim`)
//! catches them: each is a named place in the protocol that, when its mutant is active,
//! does what an earlier or careless version did. Compiled only with the `mutants` feature,
//! which a release build refuses; without it [`active`] is always false and the compiler
//! removes the faulty branches.

#[cfg(all(feature = "mutants", not(debug_assertions)))]
compile_error!(
    "the `mutants` feature is for the simulation's test builds only, never a release build"
);

/// Every mutant, by name: what it breaks.
pub const ALL: &[(&str, &str)] = &[
    ("publish-unconfirmed", "the mirror publishes a day's manifest when it reaches it, before the day's objects are copied and confirmed"),
    ("trust-unchanged", "the mirror publishes a day whose skipped objects were never checked against its manifest"),
    ("release-any-lease", "a run gives back the lease without checking that it is still its own"),
    ("lost-reply-fails", "a conditional write whose reply was lost is taken as refused, never read back"),
    ("unfenced-writes", "a run writes after a pause without confirming its lease"),
    ("late-coordinator-withdraws", "a coordinator withdraws a complete day before every shard has joined its plan"),
    ("pieces-overwrite", "a shard writes its objects without create-only, and without claiming its index"),
    ("duplicates-last-wins", "a manifest listing one object twice is read, the last entry winning"),
    ("iceberg-late-departure", "a day leaves its Iceberg tables only after its manifest is withdrawn from the output"),
    ("iceberg-hint-trusted", "a table's current version is taken from its hint alone, never probed past it"),
];

#[cfg(feature = "mutants")]
static ACTIVE: std::sync::Mutex<Option<&'static str>> = std::sync::Mutex::new(None);

/// Make `name` the active mutant (`None`: the protocol as written).
#[cfg(feature = "mutants")]
pub fn set(name: Option<&'static str>) {
    if let Ok(mut active) = ACTIVE.lock() {
        *active = name;
    }
}

/// True when the mutant `name` is active.
#[inline]
pub fn active(name: &str) -> bool {
    #[cfg(feature = "mutants")]
    {
        debug_assert!(ALL.iter().any(|(n, _)| *n == name), "unknown mutant {name}");
        ACTIVE.lock().map(|a| *a == Some(name)).unwrap_or(false)
    }
    #[cfg(not(feature = "mutants"))]
    {
        let _ = name;
        false
    }
}
