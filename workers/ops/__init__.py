"""Operations on the stored data: retention jobs, pgBackRest backups and archive health, and the
disaster-recovery restore."""
