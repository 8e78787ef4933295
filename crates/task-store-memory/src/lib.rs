//! `MemoryStore`: placeholder until the memory backend lands.
