"""The study's database (SQLite through SQLAlchemy): readers, case orders, every answer.

Each answer is one committed transaction when it is given (journal in WAL mode with
`synchronous=FULL`: a killed server loses nothing that was acknowledged), and the rules of the
study are enforced here rather than in the pages:

* a reader reads the arms in order (alone, then assisted), each in their own seeded random
  order of all the study's cases (`numpy.random.default_rng([seed, reader number, arm])`);
* one read per reader, arm and case (a UNIQUE constraint, and an UPDATE … WHERE answered_at IS
  NULL that succeeds once): an answer cannot be changed or given twice;
* every step that writes runs in a `BEGIN IMMEDIATE` transaction: it holds the database's write
  lock from its first read, so concurrent requests (a double click, two tabs) run one after the
  other and see each other's result — the second opening of a case counts a view, the same
  answer or confidence sent twice is accepted once (a different one is refused);
* the reading time runs from the case's first display to the diagnosis; the confidence is a
  second step whose time is not counted (DrCT2 paper, section VI.B);
* the second arm opens `washout_days` after the reader's first read of the first arm ("After an
  interval of one week from the start of experiment 1", VI.B).

Readers are identified by a random token in their link; only its SHA-256 is stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from typing import Optional, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy import orm

from ctjax import errors
from ctjax.reader import clock as clock_lib
from ctjax.reader.study import CONFIDENCE_LEVELS, Study

SCHEMA_VERSION = "1"
DAY_SECONDS = 86400.0


class Base(orm.DeclarativeBase):
  pass


class Meta(Base):
  __tablename__ = "meta"
  key: orm.Mapped[str] = orm.mapped_column(sa.String(64), primary_key=True)
  value: orm.Mapped[str] = orm.mapped_column(sa.Text)


class Reader(Base):
  __tablename__ = "readers"
  id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
  name: orm.Mapped[str] = orm.mapped_column(sa.String(200), unique=True)
  token_sha256: orm.Mapped[str] = orm.mapped_column(sa.String(64), unique=True)
  number: orm.Mapped[int] = orm.mapped_column(unique=True)   # seeds the reader's orders
  created_at: orm.Mapped[float]


class Assignment(Base):
  """Position → case, per reader and arm: the reader's random order."""
  __tablename__ = "assignments"
  reader_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("readers.id"), primary_key=True)
  arm: orm.Mapped[str] = orm.mapped_column(sa.String(16), primary_key=True)
  position: orm.Mapped[int] = orm.mapped_column(primary_key=True)
  case_id: orm.Mapped[str] = orm.mapped_column(sa.String(32))
  __table_args__ = (sa.UniqueConstraint("reader_id", "arm", "case_id"),)


class Read(Base):
  __tablename__ = "reads"
  id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
  reader_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("readers.id"))
  arm: orm.Mapped[str] = orm.mapped_column(sa.String(16))
  position: orm.Mapped[int]
  case_id: orm.Mapped[str] = orm.mapped_column(sa.String(32))
  shown_at: orm.Mapped[float]                 # first display (epoch seconds, study clock)
  views: orm.Mapped[int] = orm.mapped_column(default=1)   # viewer displays (reloads count)
  answered_at: orm.Mapped[Optional[float]]
  reading_seconds: orm.Mapped[Optional[float]]
  answer: orm.Mapped[Optional[str]] = orm.mapped_column(sa.Text)   # JSON list of labels
  confidence: orm.Mapped[Optional[int]]
  confidence_at: orm.Mapped[Optional[float]]
  __table_args__ = (
      sa.UniqueConstraint("reader_id", "arm", "case_id"),
      sa.UniqueConstraint("reader_id", "arm", "position"),
      sa.CheckConstraint("confidence IS NULL OR confidence BETWEEN 0 AND 3",
                         name="confidence_0_3"),
  )


@dataclasses.dataclass(frozen=True)
class ReaderInfo:
  id: int
  name: str
  number: int


@dataclasses.dataclass(frozen=True)
class ReadInfo:
  reader: str
  reader_number: int
  arm: str
  position: int
  case_id: str
  shown_at: float
  views: int
  answered_at: Optional[float]
  reading_seconds: Optional[float]
  answer: Optional[list[str]]
  confidence: Optional[int]
  confidence_at: Optional[float]


@dataclasses.dataclass(frozen=True)
class ReaderState:
  """Where a reader stands: `status` is next | case | confidence | washout | finished."""
  status: str
  arm: Optional[str]
  position: int                      # 0-based position in the arm's order
  total: int
  case_id: Optional[str]
  available_at: Optional[float] = None   # washout: when the arm opens
  shown_at: Optional[float] = None


def _hash(token: str) -> str:
  return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _order(seed: int, number: int, arm_index: int, n: int) -> np.ndarray:
  return np.random.default_rng([int(seed), int(number), int(arm_index)]).permutation(n)


class StudyDB:
  """The database of one study; thread-safe (one short session per operation)."""

  def __init__(self, study: Study, clock: Optional[clock_lib.Clock] = None):
    self.study = study
    self.clock = clock or clock_lib.SystemClock()
    self.engine = sa.create_engine(f"sqlite:///{study.db_path}",
                                   connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(self.engine, "connect")
    def _pragmas(dbapi_connection, _record):
      dbapi_connection.isolation_level = None   # pysqlite's own BEGIN off: see _begin
      cur = dbapi_connection.cursor()
      cur.execute("PRAGMA foreign_keys=ON")
      cur.execute("PRAGMA journal_mode=WAL")
      cur.execute("PRAGMA synchronous=FULL")
      cur.close()

    @sa.event.listens_for(self.engine, "begin")
    def _begin(conn):
      # A deferred transaction that reads, then writes after another commit fails at once
      # (SQLITE_BUSY_SNAPSHOT); IMMEDIATE takes the write lock first and waits for it.
      conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write")
                           else "BEGIN")

    Base.metadata.create_all(self.engine)
    self.Session = orm.sessionmaker(self.engine, expire_on_commit=False)
    self.WriteSession = orm.sessionmaker(self.engine.execution_options(write=True),
                                         expire_on_commit=False)
    key = f"{study.meta.get('created')} seed={study.seed} cases={len(study.cases)}"
    with self.WriteSession.begin() as s:
      got = s.get(Meta, "study")
      if got is None:
        s.add_all([Meta(key="study", value=key), Meta(key="schema", value=SCHEMA_VERSION)])
      elif got.value != key:
        raise errors.StudyError(f"{study.db_path}: belongs to another study ({got.value}), not "
                                f"{study.root / 'study.json'} ({key})")

  def close(self) -> None:
    self.engine.dispose()

  # ------------------------------------------------------------------------------ readers

  def add_reader(self, name: str) -> tuple[ReaderInfo, str]:
    """A new reader with their own case orders; returns the reader and their link token."""
    name = " ".join(str(name).split())
    if not name or len(name) > 200:
      raise errors.StudyError(f"reader name {name!r}: give 1–200 characters")
    token = secrets.token_urlsafe(18)
    n = len(self.study.cases)
    with self.WriteSession.begin() as s:
      if s.scalar(sa.select(Reader).where(Reader.name == name)) is not None:
        raise errors.StudyError(f"{self.study.db_path}: a reader named {name!r} exists "
                                "(new-token gives them a new link)")
      number = int(s.scalar(sa.select(sa.func.coalesce(sa.func.max(Reader.number), 0)))) + 1
      r = Reader(name=name, token_sha256=_hash(token), number=number,
                 created_at=self.clock.now())
      s.add(r)
      s.flush()
      for a, arm in enumerate(self.study.arms):
        for pos, k in enumerate(_order(self.study.seed, number, a, n)):
          s.add(Assignment(reader_id=r.id, arm=arm, position=pos,
                           case_id=self.study.cases[int(k)].case_id))
      info = ReaderInfo(r.id, r.name, r.number)
    return info, token

  def new_token(self, name: str) -> str:
    """Replaces a reader's link (the old one stops working); answers are kept."""
    token = secrets.token_urlsafe(18)
    with self.WriteSession.begin() as s:
      r = s.scalar(sa.select(Reader).where(Reader.name == name))
      if r is None:
        raise errors.StudyError(f"{self.study.db_path}: no reader named {name!r}")
      r.token_sha256 = _hash(token)
    return token

  def readers(self) -> list[ReaderInfo]:
    with self.Session() as s:
      return [ReaderInfo(r.id, r.name, r.number)
              for r in s.scalars(sa.select(Reader).order_by(Reader.number))]

  def reader_for_token(self, token: str) -> ReaderInfo:
    with self.Session() as s:
      r = s.scalar(sa.select(Reader).where(Reader.token_sha256 == _hash(str(token))))
      if r is None:
        raise errors.ReadRefusedError("unknown reader link: ask the study owner for yours", 404)
      return ReaderInfo(r.id, r.name, r.number)

  def order(self, reader_id: int, arm: str) -> list[str]:
    with self.Session() as s:
      return list(s.scalars(sa.select(Assignment.case_id).where(
          Assignment.reader_id == reader_id, Assignment.arm == arm
      ).order_by(Assignment.position)))

  # ------------------------------------------------------------------------------- state

  def _state(self, s: orm.Session, reader_id: int, now: float) -> ReaderState:
    n = len(self.study.cases)
    arms = self.study.arms
    for a, arm in enumerate(arms):
      reads = list(s.scalars(sa.select(Read).where(Read.reader_id == reader_id,
                                                   Read.arm == arm)))
      open_ = [r for r in reads if r.answered_at is None or r.confidence is None]
      if open_:
        r = open_[0]
        return ReaderState("case" if r.answered_at is None else "confidence", arm, r.position,
                           n, r.case_id, shown_at=r.shown_at)
      if len(reads) < n:
        if a > 0:
          first = s.scalar(sa.select(sa.func.min(Read.shown_at)).where(
              Read.reader_id == reader_id, Read.arm == arms[0]))
          opens = float(first) + self.study.washout_days * DAY_SECONDS
          if now < opens:
            return ReaderState("washout", arm, len(reads), n, None, available_at=opens)
        case_id = s.scalar(sa.select(Assignment.case_id).where(
            Assignment.reader_id == reader_id, Assignment.arm == arm,
            Assignment.position == len(reads)))
        return ReaderState("next", arm, len(reads), n, case_id)
    return ReaderState("finished", None, n, n, None)

  def state(self, reader_id: int) -> ReaderState:
    with self.Session() as s:
      return self._state(s, reader_id, self.clock.now())

  def open_case(self, reader_id: int) -> ReaderState:
    """Displays the reader's current case: its reading time starts at the first display.
    Idempotent: concurrent openings (a double click) give one read and count every view."""
    try:
      return self._open_case(reader_id)
    except sa.exc.IntegrityError:   # another writer of this file without IMMEDIATE: it won
      return self._open_case(reader_id)

  def _open_case(self, reader_id: int) -> ReaderState:
    now = self.clock.now()
    with self.WriteSession.begin() as s:
      st = self._state(s, reader_id, now)
      if st.status == "washout":
        raise errors.ReadRefusedError(
            f"the {st.arm} arm opens on {clock_lib.iso(st.available_at)} (washout of "
            f"{self.study.washout_days:g} days after your first read)", 403)
      if st.status == "next":
        s.add(Read(reader_id=reader_id, arm=st.arm, position=st.position, case_id=st.case_id,
                   shown_at=now, views=1))
        return dataclasses.replace(st, status="case", shown_at=now)
      if st.status == "case":   # a reload of the viewer; the confidence step is not a view
        s.execute(sa.update(Read).where(Read.reader_id == reader_id, Read.arm == st.arm,
                                        Read.case_id == st.case_id)
                  .values(views=Read.views + 1))
      return st

  def current_read(self, reader_id: int, case_id: str) -> ReaderState:
    """The reader's state if `case_id` is their open case; refused otherwise (images, report)."""
    with self.Session() as s:
      st = self._state(s, reader_id, self.clock.now())
    if st.status not in ("case", "confidence") or st.case_id != case_id:
      raise errors.ReadRefusedError(f"case {case_id!r} is not your open case", 403)
    return st

  def _refuse_stale(self, s: orm.Session, reader_id: int, case_id: str, st: ReaderState,
                    step: str) -> None:
    done = s.scalar(sa.select(Read).where(Read.reader_id == reader_id, Read.case_id == case_id,
                                          Read.arm == (st.arm or self.study.arms[-1])))
    if done is not None and step == "diagnosis" and done.answered_at is not None:
      raise errors.ReadRefusedError(
          f"case {case_id!r} was already answered ({clock_lib.iso(done.answered_at)}); an "
          "answer cannot be changed", 409)
    if done is not None and step == "confidence" and done.confidence is not None:
      raise errors.ReadRefusedError(
          f"the confidence of case {case_id!r} was already given; it cannot be changed", 409)
    if step == "diagnosis" and st.status == "confidence" and st.case_id == case_id:
      raise errors.ReadRefusedError(
          f"case {case_id!r} was already answered; give its confidence", 409)
    if step == "confidence" and st.status == "case" and st.case_id == case_id:
      raise errors.ReadRefusedError(f"case {case_id!r}: give the diagnosis first", 409)
    if st.status == "washout":
      raise errors.ReadRefusedError(
          f"the {st.arm} arm opens on {clock_lib.iso(st.available_at)}", 403)
    raise errors.ReadRefusedError(f"case {case_id!r} is not your open case", 409)

  # ------------------------------------------------------------------------------ answers

  def check_labels(self, labels: Sequence[str]) -> list[str]:
    known = self.study.labels
    bad = [x for x in labels if x not in known]
    if bad:
      raise errors.ReadRefusedError(
          f"unknown label {bad[0]!r}; the labels are: {', '.join(known)}", 400)
    return [x for x in known if x in set(labels)]   # study order, once each

  @staticmethod
  def check_confidence(value) -> int:
    levels = ", ".join(f"{k} ({v})" for k, v in CONFIDENCE_LEVELS.items())
    text = str(value).strip()
    if text not in {str(k) for k in CONFIDENCE_LEVELS}:
      raise errors.ReadRefusedError(f"confidence {text!r} is not one of {levels}", 400)
    return int(text)

  def answer(self, reader_id: int, case_id: str, labels: Sequence[str]) -> ReadInfo:
    """Commits the diagnosis (positive labels) of the reader's open case."""
    labels = self.check_labels(labels)
    now = self.clock.now()
    with self.WriteSession.begin() as s:
      st = self._state(s, reader_id, now)
      if st.status == "confidence" and st.case_id == case_id:
        done = self._info(s, reader_id, st.arm, case_id)
        if done.answer == labels:   # the same answer sent twice (a double click): accepted once
          return done
      if st.status != "case" or st.case_id != case_id:
        self._refuse_stale(s, reader_id, case_id, st, "diagnosis")
      res = s.execute(sa.update(Read).where(
          Read.reader_id == reader_id, Read.arm == st.arm, Read.case_id == case_id,
          Read.answered_at.is_(None)).values(
              answered_at=now, reading_seconds=now - Read.shown_at, answer=json.dumps(labels)))
      if res.rowcount != 1:
        raise errors.ReadRefusedError(f"case {case_id!r} was already answered", 409)
      return self._info(s, reader_id, st.arm, case_id)

  def rate(self, reader_id: int, case_id: str, confidence) -> ReadInfo:
    """Commits the confidence (0–3) of the reader's answered open case."""
    level = self.check_confidence(confidence)
    now = self.clock.now()
    with self.WriteSession.begin() as s:
      st = self._state(s, reader_id, now)
      if st.status != "confidence" or st.case_id != case_id:
        last = s.scalar(sa.select(Read).where(Read.reader_id == reader_id,
                                              Read.confidence_at.is_not(None))
                        .order_by(Read.confidence_at.desc(), Read.id.desc()).limit(1))
        if last is not None and last.case_id == case_id and last.confidence == level:
          return self._info(s, reader_id, last.arm, case_id)   # the same rating sent twice
        self._refuse_stale(s, reader_id, case_id, st, "confidence")
      res = s.execute(sa.update(Read).where(
          Read.reader_id == reader_id, Read.arm == st.arm, Read.case_id == case_id,
          Read.answered_at.is_not(None), Read.confidence.is_(None)).values(
              confidence=level, confidence_at=now))
      if res.rowcount != 1:
        raise errors.ReadRefusedError(f"the confidence of case {case_id!r} was already given",
                                      409)
      return self._info(s, reader_id, st.arm, case_id)

  # -------------------------------------------------------------------------------- export

  def _info(self, s: orm.Session, reader_id: int, arm: str, case_id: str) -> ReadInfo:
    row = s.execute(sa.select(Read, Reader).join(Reader, Read.reader_id == Reader.id).where(
        Read.reader_id == reader_id, Read.arm == arm, Read.case_id == case_id)).one()
    return self._to_info(*row)

  @staticmethod
  def _to_info(r: Read, reader: Reader) -> ReadInfo:
    return ReadInfo(reader.name, reader.number, r.arm, r.position, r.case_id, r.shown_at,
                    r.views, r.answered_at, r.reading_seconds,
                    None if r.answer is None else json.loads(r.answer), r.confidence,
                    r.confidence_at)

  def get_read(self, reader_id: int, arm: str, case_id: str) -> ReadInfo:
    with self.Session() as s:
      return self._info(s, reader_id, arm, case_id)

  def reads(self) -> list[ReadInfo]:
    """Every read, by reader, arm (study order) and position."""
    arm_rank = {a: i for i, a in enumerate(self.study.arms)}
    with self.Session() as s:
      rows = s.execute(sa.select(Read, Reader).join(Reader, Read.reader_id == Reader.id)).all()
      out = [self._to_info(r, reader) for r, reader in rows]
    return sorted(out, key=lambda x: (x.reader_number, arm_rank.get(x.arm, 99), x.position))
