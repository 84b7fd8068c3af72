//! Reading and writing NumPy .npy arrays.
