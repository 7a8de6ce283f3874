-- 0003_limits: per-user request rate windows and a count of each user's live tasks, so both
-- limits hold across any number of web processes.

CREATE TABLE rate_windows (
    user_id      uuid NOT NULL REFERENCES users (id),
    window_start timestamptz NOT NULL,
    hits         integer NOT NULL,
    PRIMARY KEY (user_id, window_start)
);

-- Kept on the user row, which the charge already locks, so concurrent submits cannot both
-- slip under the cap; the transition decrements it when a task ends.
ALTER TABLE users ADD COLUMN active_tasks integer NOT NULL DEFAULT 0 CHECK (active_tasks >= 0);
UPDATE users AS u
   SET active_tasks = (SELECT count(*) FROM tasks AS t
                        WHERE t.user_id = u.id
                          AND t.status IN ('pending', 'submitted', 'processing', 'storing'));
