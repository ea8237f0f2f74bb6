package org.clientregistry.hapi;

import ca.uhn.fhir.rest.annotation.Operation;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.io.Writer;
import java.nio.charset.StandardCharsets;

/**
 * {@code GET /fhir/$id-lookups}: {@code {"oneByOne": true|false, "lookups": n, "ids": m}}: whether the launcher
 * resolves several client-assigned ids one indexed query at a time ({@link OneByOneIdHelperService}), how many
 * such lookups it split since start and how many ids they held. Lets a test check that HAPI's transactions
 * still go through the replaced method (a HAPI upgrade that resolved ids elsewhere would leave it unused).
 */
public class IdLookupsProvider {

	@Operation(name = "$id-lookups", idempotent = true, manualResponse = true)
	public void idLookups(HttpServletResponse response) throws IOException {
		response.setStatus(200);
		response.setContentType("application/json");
		response.setCharacterEncoding(StandardCharsets.UTF_8.name());
		try (Writer out = response.getWriter()) {
			out.write("{\"oneByOne\":" + OneByOneIdLookupConfig.inUse
					+ ",\"lookups\":" + OneByOneIdHelperService.LOOKUPS.get()
					+ ",\"ids\":" + OneByOneIdHelperService.IDS.get() + "}");
		}
	}
}
