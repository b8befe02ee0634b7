//! rota-client. (Skeleton.)
