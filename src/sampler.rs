//! Reference samplers (EDM Heun/Euler on the Karras schedule, deterministic DDIM) that can resume at any step.
