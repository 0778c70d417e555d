//! gRPC over h2 on glommio (placeholder).
