//! The demo: the skip judged against the true PF-ODE of real data.
