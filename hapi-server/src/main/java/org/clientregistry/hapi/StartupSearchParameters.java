package org.clientregistry.hapi;

import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;

/** Writing SearchParameter resources at startup, before the HTTP port opens. */
final class StartupSearchParameters {

	private StartupSearchParameters() {}

	/**
	 * Runs {@code writes} without HAPI marking resources for reindexing (its batch jobs are not registered yet
	 * at startup), then makes the search parameter registry read the new definitions.
	 */
	static void write(JpaStorageSettings settings, ISearchParamRegistry registry, Runnable writes) {
		boolean marking = settings.isMarkResourcesForReindexingUponSearchParameterChange();
		settings.setMarkResourcesForReindexingUponSearchParameterChange(false);
		try {
			writes.run();
		} finally {
			settings.setMarkResourcesForReindexingUponSearchParameterChange(marking);
		}
		registry.forceRefresh();
	}
}
