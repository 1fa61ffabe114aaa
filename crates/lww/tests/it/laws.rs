//! The merge laws and the reference node's defects, on the sans-IO replica.
