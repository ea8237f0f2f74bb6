package org.clientregistry.hapi;

import ca.uhn.fhir.interceptor.api.Hook;
import ca.uhn.fhir.interceptor.api.Interceptor;
import ca.uhn.fhir.interceptor.api.Pointcut;
import ca.uhn.fhir.jpa.api.model.DeleteConflictList;
import ca.uhn.fhir.jpa.delete.DeleteConflictOutcome;
import java.util.Collection;
import java.util.Set;

/**
 * A reference on one of the listed paths (hapi.enforce-referential-integrity-on-delete-disable-for-paths:
 * AuditEvent.entity.what, Task.focus) never refuses a DELETE: records of what happened keep naming a source
 * record its point-of-service system retracted. Every other reference still does.
 *
 * <p>Why a hook: HAPI 8.8 reads JpaStorageSettings' setting of that name only in $delete-expunge; a DELETE
 * goes through DeleteConflictService, which never reads it. That service first looks at one reference to
 * the record; when it is a conflict, this hook drops the listed paths and asks for one more look at up to
 * maximumDeleteConflictQueryCount references (StorageConfig), where a reference on any other path is kept
 * as the conflict it is. Without it a retraction succeeded only while the first reference HAPI happened to
 * look at was the golden record's (updated in the same transaction), not an AuditEvent's.
 *
 * <p>The more thorough look is asked for whatever the first look found, not only when it dropped a trail
 * reference: when that first reference is the golden record's link (dropped by the same transaction), HAPI
 * would otherwise never look further, and a record merged into the deleted one meanwhile (its replaced-by
 * link) did not refuse the DELETE.
 */
@Interceptor
public class TrailReferencesDoNotBlockDeletes {

	private final Set<String> paths;

	public TrailReferencesDoNotBlockDeletes(Collection<String> paths) {
		this.paths = Set.copyOf(paths);
	}

	@Hook(Pointcut.STORAGE_PRESTORAGE_DELETE_CONFLICTS)
	public DeleteConflictOutcome dropTrailConflicts(DeleteConflictList conflicts) {
		conflicts.removeIf(c -> paths.contains(c.getSourcePath()));
		// one more look at every reference (up to the query count), whatever the first look found
		return new DeleteConflictOutcome().setShouldRetryCount(1);
	}
}
