-- 0022_drop_transition_wrapper: taskhook_transition, the single-task entry point 0008 kept as a
-- wrapper of taskhook_transition_many for the processes of the release before it, is called
-- by nothing any more (db/transition.py calls taskhook_transition_many).
DROP FUNCTION IF EXISTS taskhook_transition(uuid, text, task_status, task_status[], text, int,
                                            text, jsonb, jsonb, jsonb, jsonb, timestamptz);
