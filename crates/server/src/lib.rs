//! rota-server: HTTP in, commands out. (Skeleton.)
