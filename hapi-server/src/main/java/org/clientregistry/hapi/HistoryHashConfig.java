package org.clientregistry.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.dao.ResourceHistoryCalculator;
import ca.uhn.fhir.jpa.dao.WholeStringHashResourceHistoryCalculator;
import com.google.common.hash.Hashing;
import java.lang.reflect.Field;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.BeansException;
import org.springframework.beans.factory.ObjectProvider;
import org.springframework.beans.factory.config.BeanPostProcessor;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

/**
 * Replaces HAPI's resource history calculator by {@link WholeStringHashResourceHistoryCalculator} (same hashes,
 * one digest call per resource instead of one per character), unless the database is Oracle or a start-up
 * check finds the two hashes differ on a text with ASCII, Latin-1, other BMP and surrogate-pair characters.
 */
@Configuration
public class HistoryHashConfig {

	private static final Logger log = LoggerFactory.getLogger(HistoryHashConfig.class);
	static final String CHECK_TEXT = "{\"name\":\"Zoë Ñúñez Łukasz 王秀英 \uD83D\uDE00 \uD800\",\"id\":\"a-1\"}";

	@Bean
	public static BeanPostProcessor wholeStringHistoryHash(ObjectProvider<FhirContext> fhirContext) {
		return new BeanPostProcessor() {
			@Override
			public Object postProcessAfterInitialization(Object bean, String beanName) throws BeansException {
				if (bean.getClass() != ResourceHistoryCalculator.class) {
					return bean;
				}
				if (isOracle(bean)) {
					log.info("resource history hashes: HAPI's calculator (Oracle)");
					return bean;
				}
				if (!sameHash(CHECK_TEXT)) {
					log.warn("resource history hashes: the one-call SHA-256 differs from HAPI's; keeping HAPI's");
					return bean;
				}
				log.info("resource history hashes: one SHA-256 call per resource");
				return new WholeStringHashResourceHistoryCalculator(fhirContext.getObject());
			}
		};
	}

	static boolean sameHash(String text) {
		return Hashing.sha256()
				.hashUnencodedChars(text)
				.equals(WholeStringHashResourceHistoryCalculator.sha256OfChars(text));
	}

	private static boolean isOracle(Object calculator) {
		try {
			Field f = ResourceHistoryCalculator.class.getDeclaredField("myIsOracleDialect");
			f.setAccessible(true);
			return f.getBoolean(calculator);
		} catch (ReflectiveOperationException e) {
			return true; // unknown: leave HAPI's calculator in place
		}
	}
}
