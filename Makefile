# evstream — PGXS build.  `make test` and `make demo` do all the set-up
# (see test/harness.sh); `make bench` runs the benchmarks (test/bench/).
# `make test PG=17` (or 18) tests against another PostgreSQL major version,
# `make test-all` against 15, 17 and 18.  `make deb` builds Debian packages
# (postgresql-<N>-evstream) for the PostgreSQL versions installed here, in
# dist/ (debian/make-deb.sh).

EXTENSION   = evstream
EXTVERSION  = 0.2
MODULE_big  = evstream
OBJS        = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
PGFILEDESC  = "evstream - event streaming inside PostgreSQL"

DATA_built  = sql/evstream--$(EXTVERSION).sql
# every released version's install script and every update script
DATA        = $(filter-out sql/evstream--$(EXTVERSION).sql,$(wildcard sql/evstream--*.sql))

PG_CONFIG  ?= $(shell test -x /usr/lib/postgresql/15/bin/pg_config && echo /usr/lib/postgresql/15/bin/pg_config || echo pg_config)
PG_CFLAGS  += -Wall -Wextra -Werror -Wno-unused-parameter -Wno-sign-compare \
              -Wno-missing-field-initializers

# pg_regress: sql/<name>.sql against expected/<name>.out (the install
# script sources in sql/ are not tests).
REGRESS        = $(sort $(patsubst sql/%.sql,%,$(filter-out sql/evstream%.sql,$(wildcard sql/*.sql))))
REGRESS_OPTS   = --inputdir=. --load-extension=evstream
ISOLATION      = $(sort $(patsubst test/specs/%.spec,%,$(wildcard test/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test --load-extension=evstream
TAP_TESTS      = 1
PROVE_TESTS    = $(sort $(wildcard test/t/*.pl))
PROVE_FLAGS    = -I $(CURDIR)/test/lib

# The tests need the library preloaded, so pg_regress runs private servers.
ifdef EVSTREAM_TEMP_INSTANCE
REGRESS_OPTS   += --temp-instance=$(CURDIR)/tmp_check_reg --temp-config=$(CURDIR)/test/evstream.conf
ISOLATION_OPTS += --temp-instance=$(CURDIR)/tmp_check_iso --temp-config=$(CURDIR)/test/evstream.conf
endif

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object is rebuilt when the shared headers change
$(OBJS): src/evstream.h src/compat.h

sql/evstream--$(EXTVERSION).sql: sql/evstream.sql
	cp $< $@

# PG=15 (default) runs on the host; PG=17 / PG=18 in a cached Debian chroot
# (trixie / forky, see test/harness.sh).  test-all: PG=15, 17 and 18.
PG ?= 15

.PHONY: test demo bench test-all deb
test:
	PG=$(PG) bash test/harness.sh test
demo:
	PG=$(PG) bash test/harness.sh demo
bench:
	PG=$(PG) bash test/harness.sh bench
test-all:
	bash test/harness.sh test-all
deb:
	bash debian/make-deb.sh
