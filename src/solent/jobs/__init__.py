"""Background work that follows the change feed (issue 16).

Consumers turn change-feed events into jobs; a maintained queue runs them. On PostgreSQL the
queue is procrastinate (its tables in the same database, no extra server): each job is claimed
by exactly one worker of any node and retried with exponential backoff. On the embedded SQLite
index the same task functions run in-process, one node being all there is.
"""
