"""Test helpers for MongoDB: a mongomock client the code under test can open and close, and a
client whose cursors drop the connection mid-way."""

import mongomock
import pymongo.errors


class SharedClient:
    """A mongomock client that survives `close()` (the code under test opens and closes clients;
    mongomock keeps data per client object)."""

    def __init__(self, client=None):
        self.client = client or mongomock.MongoClient()

    def __getitem__(self, name):
        return self.client[name]

    def close(self):
        pass


class _FlakyCursor:
    def __init__(self, cursor, fail_after, owner):
        self.cursor, self.fail_after, self.owner = cursor, fail_after, owner

    def __iter__(self):
        for i, record in enumerate(self.cursor):
            if self.owner.failures_left and i == self.fail_after:
                self.owner.failures_left -= 1
                raise pymongo.errors.AutoReconnect("connection closed (simulated)")
            yield record


class _FlakyCollection:
    def __init__(self, coll, owner):
        self.coll, self.owner = coll, owner

    def find(self, *args, **kwargs):
        self.owner.queries.append(args[0] if args else kwargs.get("filter"))
        return _FlakyCursor(self.coll.find(*args, **kwargs), self.owner.fail_after, self.owner)

    def __getattr__(self, name):
        return getattr(self.coll, name)


class _FlakyDb:
    def __init__(self, db, owner):
        self.db, self.owner = db, owner

    def __getitem__(self, name):
        return _FlakyCollection(self.db[name], self.owner)


class FlakyClient(SharedClient):
    """Cursors that raise AutoReconnect after `fail_after` documents, `failures` times in all."""

    def __init__(self, client, fail_after: int, failures: int):
        super().__init__(client)
        self.fail_after, self.failures_left, self.queries = fail_after, failures, []

    def __getitem__(self, name):
        return _FlakyDb(self.client[name], self)
