"""The metadata schema of one site.

PHI (names, patient IDs, birth dates, accession numbers, free text) sits in ``*_phi``
tables beside the rows that a query can release without it: a de-identified answer
is a query that simply does not join them. Every column a C-FIND or a federated query
matches on is indexed, so queries never scan files.
"""

SCHEMA_VERSION = 3

# Version 1: the tables as first shipped. Kept verbatim: a fresh store is created at
# version 1 and brought forward by the same MIGRATIONS an existing node's store runs.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS patients (
    id INTEGER PRIMARY KEY,
    patient_key TEXT NOT NULL UNIQUE,     -- keyed hash of PatientID + issuer (local link)
    sex TEXT NOT NULL DEFAULT '',
    birth_year INTEGER,                   -- for age ranges without releasing the date
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS patient_phi (
    patient_id INTEGER PRIMARY KEY REFERENCES patients(id) ON DELETE CASCADE,
    pid TEXT NOT NULL,                    -- PatientID
    issuer TEXT NOT NULL DEFAULT '',      -- IssuerOfPatientID
    name TEXT NOT NULL DEFAULT '',        -- PatientName
    birth_date TEXT NOT NULL DEFAULT ''   -- PatientBirthDate (YYYYMMDD)
);
CREATE INDEX IF NOT EXISTS patient_phi_pid ON patient_phi(pid);
CREATE INDEX IF NOT EXISTS patient_phi_name ON patient_phi(name);
-- PN matching in C-FIND is case-insensitive (= ... COLLATE NOCASE, LIKE): needs this one.
CREATE INDEX IF NOT EXISTS patient_phi_name_nocase ON patient_phi(name COLLATE NOCASE);

CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL UNIQUE,
    patient_id INTEGER NOT NULL REFERENCES patients(id),
    study_date TEXT NOT NULL DEFAULT '',  -- YYYYMMDD
    study_time TEXT NOT NULL DEFAULT '',  -- HHMMSS.ffffff
    source TEXT NOT NULL DEFAULT 'local', -- 'local' (C-STORE) or 'upstream' (synced)
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_id);
CREATE INDEX IF NOT EXISTS studies_date ON studies(study_date);

CREATE TABLE IF NOT EXISTS study_phi (
    study_id INTEGER PRIMARY KEY REFERENCES studies(id) ON DELETE CASCADE,
    accession TEXT NOT NULL DEFAULT '',
    study_id_text TEXT NOT NULL DEFAULT '',   -- StudyID
    description TEXT NOT NULL DEFAULT '',
    referring_physician TEXT NOT NULL DEFAULT '',
    institution TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS study_phi_accession ON study_phi(accession);

CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    series_uid TEXT NOT NULL UNIQUE,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    modality TEXT NOT NULL DEFAULT '',
    body_part TEXT NOT NULL DEFAULT '',
    series_number INTEGER,
    series_date TEXT NOT NULL DEFAULT '',
    series_time TEXT NOT NULL DEFAULT '',
    last_instance_at REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_id);
CREATE INDEX IF NOT EXISTS series_modality ON series(modality, body_part);

CREATE TABLE IF NOT EXISTS series_phi (
    series_id INTEGER PRIMARY KEY REFERENCES series(id) ON DELETE CASCADE,
    description TEXT NOT NULL DEFAULT '',
    operators TEXT NOT NULL DEFAULT '',
    station TEXT NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    sop_uid TEXT NOT NULL UNIQUE,
    series_id INTEGER NOT NULL REFERENCES series(id),
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    transfer_syntax TEXT NOT NULL,
    rows INTEGER,
    columns INTEGER,
    number_of_frames INTEGER,
    position_z REAL,                      -- ImagePositionPatient[2], for ordering
    path TEXT,                            -- relative to the data dir; NULL = not local yet
    size INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT 'local',
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_id, instance_number);

-- Durable work (e.g. 'publish' a completed series). A job row is written in the same
-- transaction as the instance that causes it, so nothing acknowledged is forgotten.
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | running | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (kind, ref)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, not_before);

-- Upstream PACS sync bookkeeping and the scratch cache of retrieved instances.
CREATE TABLE IF NOT EXISTS sync_state (
    upstream TEXT PRIMARY KEY,
    last_sync_at REAL NOT NULL,
    last_study_date TEXT NOT NULL DEFAULT '',
    studies_seen INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS cache_entries (
    instance_id INTEGER PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
    size INTEGER NOT NULL,
    last_access REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_lru ON cache_entries(last_access);
"""

# -- version 2: flat query paths at 10^6-10^7 instances (issue 12) ----------------------
# * patients.pseudonym: the federation pseudonym, stored and indexed (filled by the store
#   when it learns the linkage key, and at ingest after that);
# * counts kept as columns (num_studies / num_series / num_instances / num_local, the
#   latter = instances with a local file) and site totals in ``totals``, maintained by
#   triggers so every write path (C-STORE, sync, cache eviction) keeps them exact;
# * study_modalities (study -> modality, with the study date) for ModalitiesInStudy and
#   modality + date; series.study_date (copied from its study) for the same on series;
# * index_changes: what the DHT index publisher has to look at since its last run.
V2_BACKFILL = """
-- backfill from the version-1 rows (once, at upgrade)
UPDATE series SET
    study_date = (SELECT study_date FROM studies WHERE id = series.study_id),
    num_instances = (SELECT count(*) FROM instances WHERE series_id = series.id),
    num_local = (SELECT count(*) FROM instances WHERE series_id = series.id AND path IS NOT NULL);
UPDATE studies SET
    num_series = (SELECT count(*) FROM series WHERE study_id = studies.id),
    num_instances = (SELECT coalesce(sum(num_instances), 0) FROM series WHERE study_id = studies.id),
    num_local = (SELECT coalesce(sum(num_local), 0) FROM series WHERE study_id = studies.id);
UPDATE patients SET
    num_studies = (SELECT count(*) FROM studies WHERE patient_id = patients.id),
    num_series = (SELECT coalesce(sum(num_series), 0) FROM studies WHERE patient_id = patients.id),
    num_instances = (SELECT coalesce(sum(num_instances), 0) FROM studies WHERE patient_id = patients.id),
    num_local = (SELECT coalesce(sum(num_local), 0) FROM studies WHERE patient_id = patients.id);
INSERT INTO study_modalities(study_id, modality, study_date, num_series)
    SELECT se.study_id, se.modality, min(st.study_date), count(*) FROM series se
    JOIN studies st ON st.id = se.study_id GROUP BY se.study_id, se.modality;
INSERT INTO totals(name, value) VALUES
    ('patients', (SELECT count(*) FROM patients)),
    ('studies', (SELECT count(*) FROM studies)),
    ('series', (SELECT count(*) FROM series)),
    ('instances', (SELECT count(*) FROM instances)),
    ('bytes', (SELECT coalesce(sum(size), 0) FROM instances WHERE path IS NOT NULL));
"""

V2 = """
ALTER TABLE patients ADD COLUMN pseudonym TEXT;
ALTER TABLE patients ADD COLUMN num_studies INTEGER NOT NULL DEFAULT 0;
ALTER TABLE patients ADD COLUMN num_series INTEGER NOT NULL DEFAULT 0;
ALTER TABLE patients ADD COLUMN num_instances INTEGER NOT NULL DEFAULT 0;
ALTER TABLE patients ADD COLUMN num_local INTEGER NOT NULL DEFAULT 0;
CREATE INDEX patients_pseudonym ON patients(pseudonym);
ALTER TABLE studies ADD COLUMN num_series INTEGER NOT NULL DEFAULT 0;
ALTER TABLE studies ADD COLUMN num_instances INTEGER NOT NULL DEFAULT 0;
ALTER TABLE studies ADD COLUMN num_local INTEGER NOT NULL DEFAULT 0;
CREATE INDEX studies_date_time ON studies(study_date, study_time, id);
DROP INDEX studies_date;
ALTER TABLE series ADD COLUMN study_date TEXT NOT NULL DEFAULT '';
ALTER TABLE series ADD COLUMN num_instances INTEGER NOT NULL DEFAULT 0;
ALTER TABLE series ADD COLUMN num_local INTEGER NOT NULL DEFAULT 0;
DROP INDEX series_modality;
CREATE INDEX series_modality ON series(modality, body_part, study_id);
CREATE INDEX series_modality_date ON series(modality, study_date);

CREATE TABLE study_modalities (
    study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    modality TEXT NOT NULL,
    study_date TEXT NOT NULL DEFAULT '',
    num_series INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (study_id, modality)
) WITHOUT ROWID;
CREATE INDEX study_modalities_date ON study_modalities(modality, study_date, study_id);

CREATE TABLE totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL DEFAULT 0);

CREATE TABLE index_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id INTEGER,
    modality TEXT,             -- NULL: a study row changed (patient term only)
    body_part TEXT,
    study_date TEXT
);

-- the index publisher's own state: the terms it holds and what it last published, so
-- it continues where it stopped (after a restart, or in the middle of a first publish)
CREATE TABLE index_terms (
    key BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL DEFAULT '',  -- patient terms: the patients.id they count
    count INTEGER NOT NULL,        -- coarse count the store holds now (0 = withdraw)
    published INTEGER              -- coarse count last accepted by the DHT (NULL = never)
);
CREATE INDEX index_terms_ref ON index_terms(kind, ref);

""" + V2_BACKFILL + """
CREATE TRIGGER patients_ai AFTER INSERT ON patients BEGIN
    UPDATE totals SET value = value + 1 WHERE name = 'patients';
END;
CREATE TRIGGER patients_ad AFTER DELETE ON patients BEGIN
    UPDATE totals SET value = value - 1 WHERE name = 'patients';
END;

CREATE TRIGGER studies_ai AFTER INSERT ON studies BEGIN
    UPDATE patients SET num_studies = num_studies + 1 WHERE id = NEW.patient_id;
    UPDATE totals SET value = value + 1 WHERE name = 'studies';
    INSERT INTO index_changes(patient_id, study_date) VALUES (NEW.patient_id, NEW.study_date);
END;
CREATE TRIGGER studies_ad AFTER DELETE ON studies BEGIN
    UPDATE patients SET num_studies = num_studies - 1 WHERE id = OLD.patient_id;
    UPDATE totals SET value = value - 1 WHERE name = 'studies';
    INSERT INTO index_changes(patient_id, study_date) VALUES (OLD.patient_id, OLD.study_date);
END;
CREATE TRIGGER studies_au_date AFTER UPDATE OF study_date ON studies
WHEN NEW.study_date IS NOT OLD.study_date BEGIN
    UPDATE series SET study_date = NEW.study_date WHERE study_id = NEW.id;
    UPDATE study_modalities SET study_date = NEW.study_date WHERE study_id = NEW.id;
    INSERT INTO index_changes(patient_id, modality, body_part, study_date)
        SELECT NEW.patient_id, modality, body_part, OLD.study_date FROM series WHERE study_id = NEW.id
        UNION ALL
        SELECT NEW.patient_id, modality, body_part, NEW.study_date FROM series WHERE study_id = NEW.id;
END;

CREATE TRIGGER series_ai AFTER INSERT ON series BEGIN
    UPDATE series SET study_date = (SELECT study_date FROM studies WHERE id = NEW.study_id)
        WHERE id = NEW.id;
    UPDATE studies SET num_series = num_series + 1 WHERE id = NEW.study_id;
    UPDATE patients SET num_series = num_series + 1
        WHERE id = (SELECT patient_id FROM studies WHERE id = NEW.study_id);
    INSERT INTO study_modalities(study_id, modality, study_date, num_series)
        SELECT NEW.study_id, NEW.modality, study_date, 1 FROM studies WHERE id = NEW.study_id
        ON CONFLICT(study_id, modality) DO UPDATE SET num_series = num_series + 1;
    UPDATE totals SET value = value + 1 WHERE name = 'series';
    INSERT INTO index_changes(patient_id, modality, body_part, study_date)
        SELECT patient_id, NEW.modality, NEW.body_part, study_date FROM studies
        WHERE id = NEW.study_id;
END;
CREATE TRIGGER series_ad AFTER DELETE ON series BEGIN
    UPDATE studies SET num_series = num_series - 1 WHERE id = OLD.study_id;
    UPDATE patients SET num_series = num_series - 1
        WHERE id = (SELECT patient_id FROM studies WHERE id = OLD.study_id);
    UPDATE study_modalities SET num_series = num_series - 1
        WHERE study_id = OLD.study_id AND modality = OLD.modality;
    DELETE FROM study_modalities
        WHERE study_id = OLD.study_id AND modality = OLD.modality AND num_series <= 0;
    UPDATE totals SET value = value - 1 WHERE name = 'series';
    INSERT INTO index_changes(patient_id, modality, body_part, study_date)
        SELECT patient_id, OLD.modality, OLD.body_part, study_date FROM studies
        WHERE id = OLD.study_id;
END;

CREATE TRIGGER instances_ai AFTER INSERT ON instances BEGIN
    UPDATE series SET num_instances = num_instances + 1,
        num_local = num_local + (NEW.path IS NOT NULL) WHERE id = NEW.series_id;
    UPDATE studies SET num_instances = num_instances + 1,
        num_local = num_local + (NEW.path IS NOT NULL)
        WHERE id = (SELECT study_id FROM series WHERE id = NEW.series_id);
    UPDATE patients SET num_instances = num_instances + 1,
        num_local = num_local + (NEW.path IS NOT NULL)
        WHERE id = (SELECT st.patient_id FROM series se JOIN studies st ON st.id = se.study_id
                    WHERE se.id = NEW.series_id);
    UPDATE totals SET value = value + 1 WHERE name = 'instances';
    UPDATE totals SET value = value + NEW.size WHERE name = 'bytes' AND NEW.path IS NOT NULL;
END;
CREATE TRIGGER instances_ad AFTER DELETE ON instances BEGIN
    UPDATE series SET num_instances = num_instances - 1,
        num_local = num_local - (OLD.path IS NOT NULL) WHERE id = OLD.series_id;
    UPDATE studies SET num_instances = num_instances - 1,
        num_local = num_local - (OLD.path IS NOT NULL)
        WHERE id = (SELECT study_id FROM series WHERE id = OLD.series_id);
    UPDATE patients SET num_instances = num_instances - 1,
        num_local = num_local - (OLD.path IS NOT NULL)
        WHERE id = (SELECT st.patient_id FROM series se JOIN studies st ON st.id = se.study_id
                    WHERE se.id = OLD.series_id);
    UPDATE totals SET value = value - 1 WHERE name = 'instances';
    UPDATE totals SET value = value - OLD.size WHERE name = 'bytes' AND OLD.path IS NOT NULL;
END;
CREATE TRIGGER instances_au_path AFTER UPDATE OF path, size ON instances BEGIN
    UPDATE series SET num_local = num_local + (NEW.path IS NOT NULL) - (OLD.path IS NOT NULL)
        WHERE id = NEW.series_id AND (NEW.path IS NULL) <> (OLD.path IS NULL);
    UPDATE studies SET num_local = num_local + (NEW.path IS NOT NULL) - (OLD.path IS NOT NULL)
        WHERE id = (SELECT study_id FROM series WHERE id = NEW.series_id)
        AND (NEW.path IS NULL) <> (OLD.path IS NULL);
    UPDATE patients SET num_local = num_local + (NEW.path IS NOT NULL) - (OLD.path IS NOT NULL)
        WHERE id = (SELECT st.patient_id FROM series se JOIN studies st ON st.id = se.study_id
                    WHERE se.id = NEW.series_id) AND (NEW.path IS NULL) <> (OLD.path IS NULL);
    UPDATE totals SET value = value
        + (CASE WHEN NEW.path IS NULL THEN 0 ELSE NEW.size END)
        - (CASE WHEN OLD.path IS NULL THEN 0 ELSE OLD.size END) WHERE name = 'bytes';
END;
"""

# Version 3 changed how PostgreSQL keeps the instance counts (per statement, see
# schema_postgres.V3); SQLite's per-row triggers stay (they cost microseconds here), so
# its version 3 only keeps the two stores' version numbers the same.
V3 = "SELECT 1;"

# (version, script): each runs once, in one transaction, in this order.
MIGRATIONS: tuple[tuple[int, str], ...] = ((2, V2), (3, V3))
