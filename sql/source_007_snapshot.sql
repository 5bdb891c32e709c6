-- pgteleport source, version 7: the initial snapshot a mirror asks for
-- (`do_initial_snapshot`): NULL none, 'pending' until its initial load completed, 'done'.
-- While it is pending the mirror runs the load (SNAPSHOT) instead of shipping batches, and
-- a resume after a pause goes back to SNAPSHOT.
alter table target_state
    add column if not exists snapshot text check (snapshot in ('pending', 'done'));
